"""The kernel: controller, engines, adapters and clients."""
