import assert from "node:assert/strict";
import {
  envName,
  type FlagSpec,
  FlagValues,
  formatFlags,
  parseFlags,
  UsageError,
} from "./flags.ts";

const SPECS: FlagSpec[] = [
  { name: "config-dir", kind: "string", arg: "DIR", help: "Dir" },
  { name: "api-port", kind: "int", arg: "PORT", default: "9000", help: "Port" },
  { name: "acl", kind: "bool", default: "false", help: "ACL" },
  { name: "mode", kind: "string", values: ["http", "tcp"], default: "http", help: "Mode" },
  { name: "ignore", kind: "list", default: "kube-system", help: "NS" },
  { name: "ports", kind: "range", default: "10000-14999", help: "Range" },
  { name: "timeout", kind: "duration", default: "5s", help: "Timeout" },
  { name: "tries", kind: "count", default: "3", help: "Tries" },
];

Deno.test("envName() maps a flag to its MESHD_ variable", () => {
  assert.equal(envName("config-dir"), "MESHD_CONFIG_DIR");
  assert.equal(envName("acl"), "MESHD_ACL");
});

Deno.test("parseFlags() takes --flag value, --flag=value, booleans and defaults", () => {
  const { values, positionals, help } = parseFlags(
    ["--config-dir", "/d", "--api-port=9100", "--acl", "extra", "--ignore", "a, b,,c"],
    SPECS,
  );
  assert.deepEqual(values, {
    "config-dir": "/d",
    "api-port": 9100,
    acl: true,
    mode: "http",
    ignore: ["a", "b", "c"],
    ports: { first: 10000, last: 14999 },
    timeout: 5000,
    tries: 3,
  });
  const d = (t: string) => parseFlags(["--timeout", t], SPECS).values.timeout;
  assert.deepEqual([d("250ms"), d("1.5s"), d("2m"), d("1h")], [250, 1500, 120_000, 3_600_000]);
  assert.deepEqual(positionals, ["extra"]);
  assert.equal(help, false);
  assert.equal(parseFlags(["--no-acl"], SPECS).values.acl, false);
  assert.equal(parseFlags(["--acl=no"], SPECS).values.acl, false);
  assert.equal(parseFlags(["-h"], SPECS).help, true);
  assert.deepEqual(parseFlags(["--", "--acl"], SPECS).positionals, ["--acl"]);
});

Deno.test("parseFlags() reads MESHD_* variables, and a flag beats its variable", () => {
  const env: Record<string, string> = { MESHD_API_PORT: "9200", MESHD_ACL: "1", MESHD_MODE: "" };
  const fromEnv = parseFlags([], SPECS, (k) => env[k]);
  assert.equal(fromEnv.values["api-port"], 9200);
  assert.equal(fromEnv.values.acl, true);
  // An empty variable counts as unset.
  assert.equal(fromEnv.values.mode, "http");
  assert.equal(parseFlags(["--api-port", "1"], SPECS, (k) => env[k]).values["api-port"], 1);
});

Deno.test("parseFlags() rejects unknown flags, missing and bad values, naming the source", () => {
  const cases: [string[], Record<string, string>, RegExp][] = [
    [["--nope"], {}, /Unknown flag "--nope"/],
    [["--config-dir"], {}, /Flag "--config-dir" needs a value \(DIR\)/],
    [["--config-dir", "--acl"], {}, /needs a value/],
    [["--api-port", "http"], {}, /Invalid value "http" for --api-port: expected a port number/],
    [["--api-port", "70000"], {}, /expected a port number from 0 to 65535/],
    [["--mode", "udp"], {}, /Invalid value "udp" for --mode: expected http, tcp/],
    [["--acl=maybe"], {}, /expected true or false/],
    [["--ports", "20-10"], {}, /expected a port range such as 10000-14999/],
    [[], { MESHD_API_PORT: "x" }, /Invalid value "x" for MESHD_API_PORT/],
    [["--timeout", "5"], {}, /expected a duration such as 500ms, 5s, 2m or 1h/],
    [["--timeout", "0s"], {}, /expected a duration/],
    [["--tries", "0"], {}, /expected a whole number of at least 1/],
  ];
  for (const [argv, env, re] of cases) {
    assert.throws(() => parseFlags(argv, SPECS, (k) => env[k]), (e: unknown) => {
      assert.ok(e instanceof UsageError);
      assert.match(e.message, re);
      return true;
    });
  }
});

Deno.test("parseFlags() takes 0 for a duration flag that allows it, in any unit or none", () => {
  const specs: FlagSpec[] = [
    { name: "idle", kind: "duration", default: "5m", zeroOff: true, help: "Idle" },
  ];
  const d = (t: string) => parseFlags(["--idle", t], specs).values.idle;
  assert.deepEqual([d("0"), d("0s"), d("0ms"), d("0.0h"), d("5m"), d("1ms")], [
    0,
    0,
    0,
    0,
    300_000,
    1,
  ]);
  for (const bad of ["-1", "5", "0x", "abc", "0.1ms", ""]) {
    assert.throws(
      () => parseFlags(["--idle", bad], specs),
      (e: unknown) => {
        assert.ok(e instanceof UsageError, `--idle "${bad}"`);
        assert.match(e.message, /expected a duration such as 500ms, 5s, 2m or 1h, or 0 for none$/);
        return true;
      },
    );
  }
  // Not allowed, 0 stays an error.
  assert.throws(() => parseFlags(["--timeout", "0"], SPECS), /expected a duration such as/);
});

Deno.test("formatFlags() lists every flag with its variable and default", () => {
  const text = formatFlags(SPECS, true);
  for (const s of SPECS) {
    const line = text.split("\n").find((l) => l.startsWith(`  --${s.name}`));
    assert.ok(line, `--${s.name} is listed`);
    assert.match(line, new RegExp(`env ${envName(s.name)}`));
    if (s.default) assert.match(line, new RegExp(`default ${s.default}`));
  }
  assert.match(text, /^ {2}--help +Show this help$/m);
});

Deno.test("parseFlags() takes a one-letter form as -o value and -o=value", () => {
  const specs: FlagSpec[] = [
    { name: "output", short: "o", kind: "string", values: ["text", "json"], help: "Out" },
  ];
  assert.equal(parseFlags(["-o", "json"], specs).values["output"], "json");
  assert.equal(parseFlags(["-o=json"], specs).values["output"], "json");
  assert.throws(() => parseFlags(["-x"], specs), UsageError, 'Unknown flag "-x"');
  assert.throws(() => parseFlags(["-o", "yaml"], specs), /expected text, json/);
  assert.match(formatFlags(specs), /^ {2}-o, --output text\|json/);
});

Deno.test("parseFlags() takes a bool-or-auto flag alone (on), with =true|false|auto, as --no-, and the last one given wins", () => {
  const specs: FlagSpec[] = [
    {
      name: "l4",
      kind: "bool-or-auto",
      values: ["auto", "true", "false"],
      default: "false",
      help: "",
    },
    { name: "acl", kind: "bool", default: "false", help: "" },
  ];
  const l4 = (argv: string[], env: Record<string, string> = {}) =>
    parseFlags(argv, specs, (k) => env[k]).values.l4;
  const cases: [string, string[], boolean | "auto"][] = [
    ["unset: the default", [], false],
    ["alone: on, as before auto existed", ["--l4"], true],
    ["=true", ["--l4=true"], true],
    ["=false", ["--l4=false"], false],
    ["=auto", ["--l4=auto"], "auto"],
    ["=AUTO: any case, as true and false", ["--l4=AUTO"], "auto"],
    ["=1 and =no, as a bool takes", ["--l4=no"], false],
    ["--no-", ["--no-l4"], false],
    ["the last one wins: auto, then false", ["--l4=auto", "--l4=false"], false],
    ["the last one wins: false, then alone", ["--l4=false", "--l4"], true],
    ["the last one wins: alone, then auto", ["--l4", "--l4=auto"], "auto"],
  ];
  for (const [name, argv, want] of cases) assert.equal(l4(argv), want, name);
  // Alone, it never takes the next word: that stays a positional (or the next flag).
  const next = parseFlags(["--l4", "auto", "--acl"], specs);
  assert.equal(next.values.l4, true);
  assert.deepEqual(next.positionals, ["auto"]);
  assert.equal(next.values.acl, true);
  assert.equal(l4([], { MESHD_L4: "auto" }), "auto");
  assert.equal(l4(["--l4=false"], { MESHD_L4: "auto" }), false);
  assert.throws(() => parseFlags(["--l4=maybe"], specs), UsageError);
  assert.throws(
    () => parseFlags(["--l4=maybe"], specs),
    /^UsageError: Invalid value "maybe" for --l4: expected true, false or auto$/,
  );
  assert.throws(() => parseFlags([], specs, (k) => ({ MESHD_L4: "on" })[k]), /for MESHD_L4/);
  assert.match(formatFlags(specs), /^ {2}--l4\[=auto\|true\|false\] /m);
});

Deno.test("FlagValues reads each kind typed, and a read of the wrong type is a bug", () => {
  const specs: FlagSpec[] = [
    { name: "name", kind: "string", default: "x", help: "" },
    { name: "port", kind: "int", default: "80", help: "" },
    { name: "on", kind: "bool", default: "false", help: "" },
    { name: "ns", kind: "list", default: "a,b", help: "" },
    { name: "ports", kind: "range", default: "10-20", help: "" },
    { name: "workers", kind: "count-or-auto", default: "auto", help: "" },
    { name: "l4", kind: "bool-or-auto", default: "auto", help: "" },
    { name: "unset", kind: "string", help: "" },
  ];
  const v = new FlagValues(parseFlags(["--on"], specs).values);
  assert.equal(v.string("name"), "x");
  assert.equal(v.number("port"), 80);
  assert.equal(v.bool("on"), true);
  assert.deepEqual(v.list("ns"), ["a", "b"]);
  assert.deepEqual(v.range("ports"), { first: 10, last: 20 });
  assert.equal(v.countOrAuto("workers"), "auto");
  assert.equal(v.boolOrAuto("l4"), "auto");
  assert.equal(v.boolOrAuto("on"), true);
  assert.throws(() => v.boolOrAuto("name"), TypeError);
  assert.equal(v.optionalString("unset"), undefined);
  assert.throws(() => v.string("unset"), TypeError);
  assert.throws(() => v.number("name"), TypeError);
  assert.throws(() => v.choice("name", ["a", "b"]), TypeError);
  assert.throws(() => v.string("nope"), /No flag "--nope" was parsed/);
});
