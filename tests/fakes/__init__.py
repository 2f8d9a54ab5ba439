"""Fakes for hardware this machine lacks, each at the lowest interface the real library uses.

- :mod:`tests.fakes.ina219`: a register-level INA219 chip on a fake I2C bus, installed in place of
  ``Adafruit_PureIO.smbus.SMBus`` so pi-ina219 and Adafruit-GPIO run unmodified above it.
- :mod:`tests.fakes.jtop`: a stand-in for jetson-stats' ``jtop`` client class with the ``power``
  structures of jetson-stats 3.x (tuple of 'cur'/'avg') and 4.x (``{'rail':…, 'tot':…}``) for a Nano and an Orin.
- :mod:`tests.fakes.sysfs`: ``/sys/class/hwmon`` and ``/sys/class/thermal`` trees in a temporary directory.
"""
