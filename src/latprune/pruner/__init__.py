"""The decision: channel groups, importance, the knapsack, plans and slimming."""
