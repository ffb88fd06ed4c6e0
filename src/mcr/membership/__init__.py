"""Group membership (IGMP and MLD): wire codecs and the querier/membership state machine, both pure."""
