"""The controller's role: modules only the controller process imports."""
