"""The runtime (private): who owns threads, time and user callbacks.

- :mod:`clock`: the one injectable source of monotonic and wall time.
- :mod:`service`: the one contract and loop shape of every background service.
- :mod:`dispatcher`: the worker pool that runs user code off service threads.
- :mod:`lease` and :mod:`deadline_watch`: the lease core shared by locks and elections
  (local deadline, renewal schedule, fence floors) and the service that watches it.
"""
