/* A small MPI library for ipython1 engines: sums across a communicator.
 *
 * The communicator arrives as a Fortran handle (MPI_Fint, a C int) and is
 * turned back into an MPI_Comm with MPI_Comm_f2c.  That is the one portable
 * way to pass a communicator through ctypes: MPI_Comm is an int in MPICH
 * but a pointer in Open MPI, while mpi4py's comm.py2f() always gives an int.
 *
 * Build:  python docs/examples/mpi/build.py   (runs mpicc -shared -fPIC)
 */
#include <math.h>
#include <mpi.h>

/* Return the sum of value over every rank of the communicator, or NaN on error. */
double ipy1_allreduce_sum(double value, MPI_Fint fcomm)
{
    MPI_Comm comm = MPI_Comm_f2c(fcomm);
    double total = 0.0;
    if (MPI_Allreduce(&value, &total, 1, MPI_DOUBLE, MPI_SUM, comm) != MPI_SUCCESS)
        return NAN;
    return total;
}

/* Sum count doubles elementwise over every rank into out; return the MPI error code. */
int ipy1_allreduce_sum_array(const double *in, double *out, int count, MPI_Fint fcomm)
{
    MPI_Comm comm = MPI_Comm_f2c(fcomm);
    return MPI_Allreduce(in, out, count, MPI_DOUBLE, MPI_SUM, comm);
}
