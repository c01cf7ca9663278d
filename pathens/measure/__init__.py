"""What is measured on a view: one module per measurement (path gradients, lesions, branch
variance and effective depth, Block Influence, ...), each a function of (view, data, options)
returning a labelled result.
"""
