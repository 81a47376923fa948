"""The overview's chart, drawn on the server as SVG (no script, no library):
tasks done and in error per minute over the last hour, as stacked bars."""
from __future__ import annotations

from typing import NamedTuple

from ..store.dashboard import Minute

MINUTES = 60
WIDTH, HEIGHT = 600, 120  # the SVG's viewBox; it scales to the page's width
BAR = WIDTH / MINUTES


class Bar(NamedTuple):
    x: float
    width: float
    done_y: float
    done_height: float
    error_y: float
    error_height: float
    label: str  # the bar's tooltip


class Chart(NamedTuple):
    bars: list[Bar]
    peak: int  # tasks in the busiest minute (the scale's top)
    done: int  # over the hour
    error: int
    width: int = WIDTH
    height: int = HEIGHT


def chart(minutes: dict[int, Minute], now: float) -> Chart:
    """Bars for the MINUTES minutes up to the one holding `now` (epoch seconds)."""
    last = int(now - now % 60)
    hour = [minutes.get(last - 60 * i, Minute(last - 60 * i, 0, 0))
            for i in reversed(range(MINUTES))]
    peak = max((m.done + m.error for m in hour), default=0)
    scale = (HEIGHT - 2) / peak if peak else 0.0
    bars = []
    for i, m in enumerate(hour):
        done_h, error_h = m.done * scale, m.error * scale
        ago = MINUTES - 1 - i
        label = (f"{m.done:,} done, {m.error:,} in error "
                 + ("this minute" if ago == 0 else f"{ago} min ago"))
        bars.append(Bar(round(i * BAR + 0.5, 1), round(BAR - 1, 1),
                        round(HEIGHT - done_h, 1), round(done_h, 1),
                        round(HEIGHT - done_h - error_h, 1), round(error_h, 1), label))
    return Chart(bars, peak, sum(m.done for m in hour), sum(m.error for m in hour))
