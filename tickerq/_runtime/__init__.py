"""The runtime (private): who owns threads, time and user callbacks.

- :mod:`clock`: the one injectable source of monotonic and wall time.
- :mod:`service`: the one contract and loop shape of every background service.
- :mod:`dispatcher`: the worker pool that runs user code off service threads.
"""
