"""Who is who: stable person ids on real footage.

`LiveIdentity` (causal, one per stream) and `identify_offline` (whole recording) share
one frame-to-frame tracker (`tracklets`): a constant-velocity Kalman filter on every
joint, duplicate suppression, left/right swap correction and rejection of impossible
joints and skeletons. They differ in how tracklets become persons: live re-acquires a
lost person by body-proportion signature and position as soon as a new tracklet is
confirmed; offline stitches all tracklets afterwards with one global assignment.
docs/identity.md has the design and the measured thresholds.
"""

from __future__ import annotations

from pose_analyzer.identity.config import IdentityConfig
from pose_analyzer.identity.live import LiveIdentity
from pose_analyzer.identity.offline import identify_offline

__all__ = ["IdentityConfig", "LiveIdentity", "identify_offline"]
