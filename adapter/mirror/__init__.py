"""The mirror of Stripe's objects, fed by webhook deliveries and ``metersync sync``.

- :mod:`~adapter.mirror.process`: ``process_delivery``, ``replay``, ``sync_object``.
- :mod:`~adapter.mirror.router`: the one table from event type to handler.
- :mod:`~adapter.mirror.ordering`: why an event never moves an object backwards.
- one module per resource (``customers``, ``subscriptions``, ``invoices``, ``prices``,
  ``meters``), each with a pure ``to_row(obj)`` and ``apply(ctx, obj, kind=…)``.
- :mod:`~adapter.mirror.effects`: what the mirror does to usage (closing reports at a
  period change, the final flush for a draft invoice).

Nothing is imported here, so importing one module does not load the others.
"""
