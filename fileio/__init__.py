"""Files written whole or not at all, and archives read defensively."""
