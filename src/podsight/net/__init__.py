"""What every network gadget shares: network namespaces, interfaces, filter rules,
protocol names and address decoding. Nothing here knows any one gadget."""
