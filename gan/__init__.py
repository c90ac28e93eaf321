"""Torch-free pieces shared by training, the service and the CLI (``gan`` console command)."""
__version__ = "0.1.0"
