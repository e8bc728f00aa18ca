"""What commands print: sync plans, status and discovery reports, as text and JSON."""
