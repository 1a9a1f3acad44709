// What the draw page and the training page share: one JSON POST to this server's API.
// A reply that is not OK becomes an Error with the server's one-line message.
"use strict";

async function post(path, body) {
  const reply = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json"},
                                   body: JSON.stringify(body || {})});
  const data = await reply.json();
  if (!reply.ok) throw new Error(data.error || reply.statusText);
  return data;
}
