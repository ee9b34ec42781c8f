"""One thin HTTP client per vendor API, all on `base.HttpClient`. No Dagster imports."""

from segment_ops.clients.base import (
    HttpClient,
    RetryEvent,
    RetryPolicy,
    VendorAuthError,
    VendorError,
    VendorFatalError,
    VendorRequestError,
    VendorUnavailable,
)
from segment_ops.clients.fullstory import FullstoryClient, FullstoryUsersDestination
from segment_ops.clients.pendo import PendoClient
from segment_ops.clients.segment_profiles import SegmentProfilesClient
from segment_ops.clients.segment_public_api import SegmentPublicApiClient
from segment_ops.clients.segment_tracking import SegmentTrackingClient
from segment_ops.clients.splunk_hec import SplunkHecClient

__all__ = [
    "FullstoryClient",
    "FullstoryUsersDestination",
    "HttpClient",
    "PendoClient",
    "RetryEvent",
    "RetryPolicy",
    "SegmentProfilesClient",
    "SegmentPublicApiClient",
    "SegmentTrackingClient",
    "SplunkHecClient",
    "VendorAuthError",
    "VendorError",
    "VendorFatalError",
    "VendorRequestError",
    "VendorUnavailable",
]
