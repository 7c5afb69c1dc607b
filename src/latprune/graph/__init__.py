"""The network as latprune sees it: channel groups, removable blocks, latency units, and slimming a plan."""
