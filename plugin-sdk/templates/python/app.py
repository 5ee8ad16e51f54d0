"""A new plugin, as ``quiver plugin new NAME --lang python`` writes it: change
``on_event``. As it stands it adds a header to every record, which is useful on its
own (tag records with where they came in).

Parameters: ``name`` and ``value`` of the header to add (default ``tagged-by=quiver``).
"""

from quiver_plugin import Header, Plugin, Replace, export, param, to_new


class AddHeader(Plugin):
    def on_event(self, topic, event):
        name = param("name")
        value = param("value")
        record = to_new(event)
        record.headers.append(
            Header(
                name="tagged-by" if name is None else name,
                value=("quiver" if value is None else value).encode(),
            )
        )
        return Replace([record])


WitWorld = export(AddHeader)
