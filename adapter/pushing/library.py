"""What the stages above pushing (mirror, reconciling, the meter check) use of the
library handle. :class:`adapter.client.Metersync` satisfies it; they name this, not the
client, so no stage depends on the layer above it, not even for types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import sqlalchemy as sa

    from adapter.gateway import Gateway
    from adapter.pushing.pusher import Pusher
    from adapter.store.catalog import Accounts, Meters
    from adapter.store.periods import Periods
    from config.settings import Settings


class Library(Protocol):
    """The settings, engine and stores of one connected metersync, its Stripe gateway
    (``None`` in a dry run) and its v1 pusher."""

    @property
    def settings(self) -> Settings: ...
    @property
    def engine(self) -> sa.Engine: ...
    @property
    def accounts(self) -> Accounts: ...
    @property
    def meters(self) -> Meters: ...
    @property
    def periods(self) -> Periods: ...
    def gateway(self) -> Gateway | None: ...
    def pusher(self) -> Pusher: ...
