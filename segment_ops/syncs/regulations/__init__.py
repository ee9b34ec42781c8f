"""The `segment/regulations` sync: privacy requests filed with Segment and honoured by every sync."""
