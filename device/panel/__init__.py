"""The operator station: ``anomaly-device panel`` — a web page, MQTT events and Prometheus metrics,
served by a second service that reads the inspection journal read-only (docs/INTEGRATION.md).

Modules: ``settings`` ([panel], [mqtt]), ``reader`` (the read-only journal), ``store`` (users,
sessions, marks, audit, MQTT cursor), ``auth``, ``actions`` (life-cycle commands, threshold
preview), ``mqtt`` (publisher), ``metrics`` (collector), ``charts`` (SVG), ``web`` (Starlette app),
``service`` (the process), ``cli``.
"""
