"""What the gateway says about itself: health policy, latest values, the HTTP endpoint.

- :mod:`gateway.status.health`: is the pipeline making progress? (``/healthz``
  and the systemd watchdog share this one policy)
- :mod:`gateway.status.latest`: the latest value and history of every metric
- :mod:`gateway.status.app`: ``/metrics``, ``/healthz``, ``/api/status`` and the
  page (``page.html``, packaged with the code)
"""
