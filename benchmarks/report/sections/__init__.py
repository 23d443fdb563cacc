"""The page's sections: each selects its rows from the frames and returns plain data (numbers,
names and `render.Table`s of raw values), or None when the run has nothing for it. The prose
and the order are the template's (``page.md.j2``); the arithmetic is here."""
