"""manage.py process_items."""
