"""Searched widths: a PruningNet trained with the network, then a search over width vectors that
scores each candidate by the accuracy of the weights the PruningNet generates for it.

    topology     the network as a graph of channel groups, and the GCN over it
    pruningnet   the GCN plus one head per group: per-channel modulations for any width vector,
                 trained jointly with the weight-sharing network; the candidate's score
    space        width vectors on the LUT grid under the budget: sampling, projection
    agent        REINFORCE over per-group widths (``graph-rl``)
    evolution    the evolutionary search over the same PruningNet (``evolution``)
    method       both as latprune methods: the search, then the closed loop
"""
