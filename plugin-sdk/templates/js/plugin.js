/**
 * A new plugin, as `quiver plugin new NAME --lang js` writes it: change `onEvent`.
 * As it stands it adds a header to every record, which is useful on its own (tag
 * records with where they came in).
 *
 * Parameters: `name` and `value` of the header to add (default `tagged-by=quiver`).
 */

import { definePlugin, param, replace, toNew } from './quiver-plugin.js';

export const process = definePlugin({
  onEvent(topic, event) {
    const record = toNew(event);
    record.headers.push({
      name: param('name') ?? 'tagged-by',
      value: param('value') ?? 'quiver',
    });
    return replace(record);
  },
});
