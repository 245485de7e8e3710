"""The items app: its management command coordinates concurrent runs through a channel."""
