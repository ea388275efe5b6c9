"use strict";

// A minimal Express app: slugrunner gives it $PORT.
const express = require("express");

const app = express();
const port = Number(process.env.PORT || 5000);

app.get("/", (_req, res) => {
  res.type("text/plain").send("Hello from Express on slugrunner!\n");
});

const server = app.listen(port, "0.0.0.0", () => {
  console.log(`listening on ${port} (NODE_ENV=${process.env.NODE_ENV})`);
});

// Heroku-style shutdown: finish in-flight requests on SIGTERM.
process.on("SIGTERM", () => server.close(() => process.exit(0)));
