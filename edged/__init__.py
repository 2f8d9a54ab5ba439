"""edged: on-device ML offloading runtime for Raspberry Pi and NVIDIA Jetson.

Each sensor input is routed to a local model and run either locally or on a fog
node, decided per input from the model's worst-case execution time (WCET) and
the live threshold T_L + T_F (Saguil & Azim), or from a queue- and energy-aware
estimate. Heavy dependencies are imported lazily inside their adapters.
"""

__version__ = "0.1.0"
