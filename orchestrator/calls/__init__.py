"""The call path the worker and the ingress share: what a response tells, one parse."""
