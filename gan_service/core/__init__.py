"""The bottom floor: torch-free pieces shared by training, evaluation, the service and the CLI.

Nothing here imports another package of this project; every other package may import from here.
"""
