"""The Grafana dashboard outside Grafana: its queries as Grafana sends them, and a PNG drawn from them.

`queries` needs only the standard library (the integration tests use it); `render` needs matplotlib
(`pip install 'embedstream[dashboard]'`). Neither is imported by the worker.
"""
