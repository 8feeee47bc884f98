#!/usr/bin/env node
// The launcher (dist/client/launcher.js) runs the update the agent switched this laptop to, if any.
import { launch } from '../dist/client/launcher.js';
await launch();
