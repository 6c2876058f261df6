// Package config is cordon's configuration: a TOML file, CORDON_*
// environment variables and command-line flags, applied in that order over
// the defaults, so that
//
//	flags  >  environment  >  file  >  defaults
//
// Every setting has one key (e.g. "limits.update_instructions"), one
// environment variable derived from it (CORDON_LIMITS_UPDATE_INSTRUCTIONS)
// and may be given on the command line with --set KEY=VALUE; the common ones
// also have their own flag (--isolation, --log-level, --listen…). The file
// is <home>/config.toml, or the one named by --config or CORDON_CONFIG
// (which must then exist). The table of settings is Settings; `cordon config
// show` prints the effective values and where each came from.
//
// The TOML library is github.com/BurntSushi/toml: no dependencies, TOML 1.0,
// and its MetaData lists exactly the keys a file defines, with their types,
// which is what reporting unknown keys and the source of each value needs;
// its ParseError shows the offending line. (pelletier/go-toml/v2 is faster,
// which does not matter for a file read once at start.)
package config

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/BurntSushi/toml"

	"github.com/cordon-dev/cordon/internal/cycles"
	"github.com/cordon-dev/cordon/internal/homedir"
	"github.com/cordon-dev/cordon/internal/host"
)

// Config is the effective configuration.
type Config struct {
	Home string // state directory (flag --home, CORDON_HOME; not in the file)
	File string // the configuration file read, "" if none

	Isolation string
	LogLevel  string
	LogFormat string

	Listen          string
	TLSCert         string
	TLSKey          string
	RequireToken    bool
	AllowedHosts    []string
	RequestTimeout  time.Duration
	ShutdownTimeout time.Duration
	MaxRequests     int
	MaxInstalls     int
	MaxConns        int

	// Host is what the node gets (limits, fees, logs kept).
	Host host.Config

	source map[string]Source
}

// Source says where a value came from.
type Source string

// The sources, lowest precedence first.
const (
	FromDefault Source = "default"
	FromFile    Source = "file"
	FromEnv     Source = "env"
	FromFlag    Source = "flag"
)

// Source returns where the value of key came from.
func (c *Config) Source(key string) Source {
	if s, ok := c.source[key]; ok {
		return s
	}
	return FromDefault
}

// Setting is one configuration key.
type Setting struct {
	Key  string // section.name
	Flag string // its own flag, if any ("" = only --set)
	Help string
	get  func(*Config) string
	set  func(*Config, string) error
	// quoted: TOML string (else integer, boolean)
	quoted bool
}

// Env is the environment variable of the setting.
func (s *Setting) Env() string {
	return "CORDON_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(s.Key))
}

// Get returns the setting's value in c, as text.
func (s *Setting) Get(c *Config) string { return s.get(c) }

// Settings lists every setting, in the order `config show` prints them.
var Settings = []*Setting{
	str("isolation", "isolation", "where canisters execute: sandbox or inprocess",
		func(c *Config) *string { return &c.Isolation }, oneOf("sandbox", "inprocess")),
	str("log.level", "log-level", "log level: debug, info, warn, error (serve logs at info unless set)",
		func(c *Config) *string { return &c.LogLevel }, oneOf("debug", "info", "warn", "error")),
	str("log.format", "log-format", "log format: text or json",
		func(c *Config) *string { return &c.LogFormat }, oneOf("text", "json")),

	str("server.listen", "listen", "`HOST:PORT` that cordon serve listens on; an address other than loopback always requires the token",
		func(c *Config) *string { return &c.Listen }, nil),
	str("server.tls_cert", "tls-cert", "TLS certificate `FILE` (PEM) for cordon serve; with server.tls_key",
		func(c *Config) *string { return &c.TLSCert }, nil),
	str("server.tls_key", "tls-key", "TLS private key `FILE` (PEM) for cordon serve; with server.tls_cert",
		func(c *Config) *string { return &c.TLSKey }, nil),
	boolean("server.require_token", "require-token", "require the bearer token (<home>/token); false: INSECURE, a loopback listener takes requests without it (any other address always requires it)",
		func(c *Config) *bool { return &c.RequireToken }),
	{Key: "server.allowed_hosts", quoted: true,
		Help: "comma-separated host names requests may name in Host besides IP addresses, localhost and the TLS certificate's names (others are refused: DNS rebinding)",
		get:  func(c *Config) string { return strings.Join(c.AllowedHosts, ",") },
		set: func(c *Config, v string) error {
			c.AllowedHosts = nil
			for _, h := range strings.Split(v, ",") {
				if h = strings.TrimSpace(h); h != "" {
					if strings.ContainsAny(h, " /:@") {
						return fmt.Errorf("%q is not a host name", h)
					}
					c.AllowedHosts = append(c.AllowedHosts, h)
				}
			}
			return nil
		}},
	duration("server.request_timeout", "", "longest an API request may run (install, call)",
		func(c *Config) *time.Duration { return &c.RequestTimeout }),
	duration("server.shutdown_timeout", "", "how long a graceful shutdown waits for requests and messages in flight",
		func(c *Config) *time.Duration { return &c.ShutdownTimeout }),
	integer("server.max_requests", "", "API requests handled at once; more are refused with 503",
		func(c *Config) *int { return &c.MaxRequests }, 1),
	integer("server.max_installs", "", "installs handled at once (each holds its module in memory); more get 503",
		func(c *Config) *int { return &c.MaxInstalls }, 1),
	integer("server.max_connections", "", "open API connections; at the limit a new one replaces an idle one (one that carried no token first), or is closed if every one has a request in flight",
		func(c *Config) *int { return &c.MaxConns }, 1),

	count("limits.update_instructions", "", "instructions per update message",
		func(c *Config) *uint64 { return &c.Host.UpdateInstructions }),
	count("limits.query_instructions", "", "instructions per query",
		func(c *Config) *uint64 { return &c.Host.QueryInstructions }),
	count("limits.install_instructions", "", "instructions per install or upgrade",
		func(c *Config) *uint64 { return &c.Host.InstallInstructions }),
	duration("limits.query_walltime", "", "longest a query may run with every call a composite query makes (IC: 10s); beyond it the query fails with CANISTER_ERROR",
		func(c *Config) *time.Duration { return &c.Host.QueryWalltime }),
	size("limits.memory_capacity", "", "heap and stable memory, Wasm chunk stores and installed modules of all canisters together (bytes; 0: half of this machine's memory); beyond it memory.grow returns -1 and installs are refused",
		func(c *Config) *uint64 { return &c.Host.MemoryCapacity }),
	size("limits.disk_margin", "", "free space kept on the file system of the home (bytes; 0: 1% of the file system, at least 1 GiB, at most a quarter of it); an update, install or chunk upload whose canister data would leave less is refused with SYS_TRANSIENT, and so are updates and installs once less is left; queries, deletions and the node's own records go on",
		func(c *Config) *uint64 { return &c.Host.DiskMargin }),
	size("limits.execution_memory", "", "memory pages executions in flight hand the host, all together: outputs until their commit, composite queries' working state (bytes; 0: a quarter of this machine's memory); a message waits for room, a query that finds none fails with SYS_TRANSIENT",
		func(c *Config) *uint64 { return &c.Host.ExecutionMemory }),
	size("limits.heap_bytes_32", "", "Wasm heap limit of 32-bit canisters (bytes; units KiB, MiB, GiB allowed; at most 6 GiB)",
		func(c *Config) *uint64 { return &c.Host.HeapBytes32 }),
	size("limits.heap_bytes_64", "", "Wasm heap limit of 64-bit canisters (at most 6 GiB, the address space every memory reserves)",
		func(c *Config) *uint64 { return &c.Host.HeapBytes64 }),
	size("limits.stable_bytes", "", "stable memory limit",
		func(c *Config) *uint64 { return &c.Host.StableBytes }),
	size("limits.heap_dirty_bytes", "", "heap bytes one update, callback or timer may change, counted in 4 KiB pages; more traps (0: no bound; each changed page also costs 3000 instructions)",
		func(c *Config) *uint64 { return &c.Host.HeapDirty.Update }),
	size("limits.heap_dirty_bytes_query", "", "heap bytes one query or composite query execution may change (0: no bound)",
		func(c *Config) *uint64 { return &c.Host.HeapDirty.Query }),
	size("limits.heap_dirty_bytes_install", "", "heap bytes canister_init, pre_upgrade or post_upgrade may change each (0: no bound)",
		func(c *Config) *uint64 { return &c.Host.HeapDirty.Install }),
	size("limits.stable_dirty_bytes", "", "stable memory bytes one update, callback or timer may change, counted in 4 KiB pages; more traps (IC: 2 GiB; 0: no bound; each changed page also costs 1000 instructions)",
		func(c *Config) *uint64 { return &c.Host.StableDirty.Update }),
	size("limits.stable_dirty_bytes_query", "", "stable memory bytes one query execution may change (IC: 1 GiB; 0: no bound)",
		func(c *Config) *uint64 { return &c.Host.StableDirty.Query }),
	size("limits.stable_dirty_bytes_install", "", "stable memory bytes canister_init, pre_upgrade or post_upgrade may change each (IC: 8 GiB; 0: no bound)",
		func(c *Config) *uint64 { return &c.Host.StableDirty.Install }),
	size("limits.reply_bytes", "", "reply, reject and call argument size limit",
		func(c *Config) *uint64 { return &c.Host.ReplyBytes }),
	{Key: "limits.module_bytes", Help: "Wasm module size limit (after decompression); also the most install reads of its FILE and call/query of --candid FILE",
		get: func(c *Config) string { return strconv.Itoa(c.Host.ModuleLimits.MaxBytes) },
		set: func(c *Config, v string) error {
			n, err := parseSize(v)
			if err == nil && n > 1<<40 {
				err = errors.New("at most 1 TiB")
			}
			if err == nil {
				c.Host.ModuleLimits.MaxBytes = int(n)
			}
			return err
		}},
	size("limits.preparing_module_bytes", "", "bytes of modules being decoded and compiled on the node at once (installs beyond it wait; 0: twice limits.module_bytes, never less than it)",
		func(c *Config) *uint64 { return &c.Host.PreparingBytes }),
	integer("limits.log_lines", "", "debug_print lines kept per canister",
		func(c *Config) *int { return &c.Host.LogLines }, 1),
	{Key: "limits.log_bytes", Help: "bytes of debug_print lines kept per canister, in memory and in the store, each line counting 64 more (8KiB to 1GiB); the oldest are dropped first, a longer line is cut",
		get: func(c *Config) string { return strconv.Itoa(c.Host.LogBytes) },
		set: func(c *Config, v string) error {
			n, err := parseSize(v)
			if err == nil && (n < host.MinLogBytes || n > 1<<30) {
				err = errors.New("want 8KiB to 1GiB")
			}
			if err == nil {
				c.Host.LogBytes = int(n)
			}
			return err
		}},
	integer("limits.queue_capacity", "", "calls from one canister to another that may await responses (IC: 500); call_perform returns 2 beyond it",
		func(c *Config) *int { return &c.Host.Messages.QueueCapacity }, 1),
	integer("limits.callback_quota", "", "outstanding calls every canister may have whatever the node's load (IC: 50)",
		func(c *Config) *int { return &c.Host.Messages.CallbackQuota }, 0),
	integer("limits.callback_soft_limit", "", "outstanding calls of the node beyond which canisters only get their quota (IC: 1000000)",
		func(c *Config) *int { return &c.Host.Messages.CallbackSoftLimit }, 0),
	size("limits.canister_message_bytes", "", "message memory of one canister's calls awaiting responses (request plus a reserved max-size response each)",
		func(c *Config) *uint64 { return &c.Host.Messages.CanisterBytes }),
	size("limits.node_message_bytes", "", "message memory of all calls awaiting responses on the node (IC: 15 GiB per subnet)",
		func(c *Config) *uint64 { return &c.Host.Messages.NodeBytes }),
	integer("limits.ingress_queue", "", "ingress messages that may wait in one canister's queue; beyond it they are refused at once with SYS_TRANSIENT (0: no bound)",
		func(c *Config) *int { return &c.Host.Messages.IngressQueue }, 0),
	size("limits.ingress_arg_bytes", "", "argument size limit of an ingress message, by every route (IC: 2 MiB); larger ones are refused (0: no bound)",
		func(c *Config) *uint64 { return &c.Host.Messages.IngressArgBytes }),
	size("limits.ingress_queue_bytes", "", "argument bytes of the ingress messages that may wait in one canister's queue; beyond it they are refused at once with SYS_TRANSIENT (0: no bound)",
		func(c *Config) *uint64 { return &c.Host.Messages.IngressQueueBytes }),
	size("limits.node_ingress_bytes", "", "argument bytes of the ingress messages that may wait in all canisters' queues of the node; beyond it they are refused at once with SYS_TRANSIENT (0: no bound)",
		func(c *Config) *uint64 { return &c.Host.Messages.NodeIngressBytes }),
	integer("limits.mgmt_calls", "", "ingress calls to the management canister in progress about one canister (a stop_canister waits until it stops); more are refused at once with SYS_TRANSIENT (0: no bound)",
		func(c *Config) *int { return &c.Host.Messages.MgmtCalls }, 0),
	size("limits.mgmt_call_bytes", "", "argument bytes of the ingress calls to the management canister in progress about one canister; beyond it they are refused at once with SYS_TRANSIENT (0: no bound)",
		func(c *Config) *uint64 { return &c.Host.Messages.MgmtCallBytes }),
	integer("limits.node_mgmt_calls", "", "ingress calls to the management canister in progress on the node; more are refused at once with SYS_TRANSIENT (0: no bound)",
		func(c *Config) *int { return &c.Host.Messages.NodeMgmtCalls }, 0),
	size("limits.node_mgmt_call_bytes", "", "argument bytes of the ingress calls to the management canister in progress on the node; beyond it they are refused at once with SYS_TRANSIENT (0: no bound)",
		func(c *Config) *uint64 { return &c.Host.Messages.NodeMgmtCallBytes }),

	boolean("sandbox.strict", "strict", "refuse to run sandboxes when a confinement layer is missing (see 'cordon doctor'); serve is strict unless set to false",
		func(c *Config) *bool { return &c.Host.Sandbox.Strict }),
	{Key: "sandbox.allow_missing", Flag: "insecure-allow-missing", quoted: true,
		Help: "INSECURE: comma-separated confinement layers strict mode may do without",
		get:  func(c *Config) string { return strings.Join(c.Host.Sandbox.AllowMissing, ",") },
		set: func(c *Config, v string) error {
			c.Host.Sandbox.AllowMissing = nil
			for _, l := range strings.Split(v, ",") {
				if l = strings.TrimSpace(l); l != "" {
					c.Host.Sandbox.AllowMissing = append(c.Host.Sandbox.AllowMissing, l)
				}
			}
			return nil
		}},
	boolean("sandbox.allow_inprocess", "", "let a strict node take in-process canisters (install --canister-isolation inprocess); they run unconfined in the host process",
		func(c *Config) *bool { return &c.Host.Sandbox.AllowInProcess }),
	str("sandbox.binary", "sandbox-binary", "sandbox executable: cmd/cordon-sandbox of this build (default: cordon-sandbox next to this binary if of the same build, else this binary)",
		func(c *Config) *string { return &c.Host.Sandbox.Binary }, nil),
	size("sandbox.memory_bytes", "", "cgroup memory limit per canister sandbox (0: the sandbox default)",
		func(c *Config) *uint64 { return &c.Host.Sandbox.MemoryBytes }),
	integer("sandbox.cpu_percent", "", "cgroup CPU quota per canister sandbox, in % of one core (0: none); a sandbox that uses CPU between messages is killed whatever the quota",
		func(c *Config) *int { return &c.Host.Sandbox.CPUPercent }, 0),
	integer("sandbox.query_threads", "", "queries of one canister its sandbox runs at once (0: twice the cores of sandbox.cpu_percent, at most 16; 1: one execution at a time)",
		func(c *Config) *int { return &c.Host.Sandbox.QueryThreads }, 0),
	integer("sandbox.max_sandboxes", "", "live canister sandboxes before the coldest is evicted (0: the default)",
		func(c *Config) *int { return &c.Host.Sandbox.MaxSandboxes }, 0),
	integer("sandbox.max_compiles", "", "modules compiled at once, each in a compiler sandbox of its own; more wait (0: the CPUs, at least 2)",
		func(c *Config) *int { return &c.Host.Sandbox.MaxCompiles }, 0),
	integer("sandbox.warm_pool", "", "blank sandboxes (confined and verified, holding no canister) kept ready for the next new or evicted canister, counted in sandbox.max_sandboxes (0: none; one-shot commands never keep any)",
		func(c *Config) *int { return &c.Host.Sandbox.WarmPool }, 0),
	integer("sandbox.preload_pool", "", "primed sandboxes (confined and verified, the module of a recently evicted canister loaded, no canister) kept for that canister's next message, which then only restores its state; counted in sandbox.max_sandboxes and the memory budget (0: none; one-shot commands never keep any)",
		func(c *Config) *int { return &c.Host.Sandbox.PreloadPool }, 0),
	size("sandbox.sealed_artifact_bytes", "", "bytes of sealed artifact memfds the host keeps to hand compiled modules to sandboxes, each checked once (0: 256 MiB)",
		func(c *Config) *uint64 { return &c.Host.Sandbox.SealedArtifactBytes }),
	size("sandbox.artifact_cache_bytes", "", "bytes of compiled artifacts cached on disk in <home>/artifacts; beyond it the least recently used go, those no live sandbox runs first, and are compiled again when needed (0: a tenth of the home's file system, at least 1 GiB)",
		func(c *Config) *uint64 { return &c.Host.Sandbox.ArtifactCacheBytes }),
	size("sandbox.memory_budget", "", "memory of all canister sandboxes together (what their cgroups are charged, else their RSS), measured after each message and every second while idle, beyond which the least recently used idle ones are evicted (bytes; 0: half of sandbox.node_memory_bytes)",
		func(c *Config) *uint64 { return &c.Host.Sandbox.MemoryBudget }),
	size("sandbox.node_memory_bytes", "", "hard memory limit of all the node's sandboxes together, compilers included: their parent cgroup's, enforced by the kernel at every allocation (a sandbox past it is OOM-killed; bytes; 0: a quarter of this machine's memory; none without the cgroup layer)",
		func(c *Config) *uint64 { return &c.Host.Sandbox.NodeMemoryBytes }),
	str("sandbox.host_ids", "", "FIRST-LAST: host uids (and gids) to give each live sandbox one of its own when cordon runs as root, so per-user kernel limits are per sandbox; the range must belong to no one else (empty: every sandbox is 65534)",
		func(c *Config) *string { return &c.Host.Sandbox.HostIDs }, func(v string) error {
			if v == "" {
				return nil
			}
			a, b, ok := strings.Cut(v, "-")
			first, err1 := strconv.ParseUint(a, 10, 32)
			last, err2 := strconv.ParseUint(b, 10, 32)
			if !ok || err1 != nil || err2 != nil || first == 0 || last < first || last >= 1<<32-1 {
				return errors.New("want FIRST-LAST, 0 < FIRST <= LAST < 4294967295")
			}
			return nil
		}),
	{Key: "sandbox.idle_timeout", Help: "a sandbox idle this long is stopped (0s: the default)", quoted: true,
		get: func(c *Config) string { return c.Host.Sandbox.IdleTimeout.String() },
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil || d < 0 {
				return errors.New("want a duration like 5m (0s: the default)")
			}
			c.Host.Sandbox.IdleTimeout = d
			return nil
		}},

	count("fees.update_execution", "", "cycles charged per update execution",
		func(c *Config) *uint64 { return &c.Host.Fees.UpdateExecution }),
	count("fees.per_instruction", "", "cycles charged per instruction",
		func(c *Config) *uint64 { return &c.Host.Fees.PerInstruction }),
	count("fees.ingress_reception", "", "cycles charged per ingress message",
		func(c *Config) *uint64 { return &c.Host.Fees.IngressReception }),
	count("fees.ingress_per_byte", "", "cycles charged per byte of ingress payload",
		func(c *Config) *uint64 { return &c.Host.Fees.IngressPerByte }),
	count("fees.call", "", "cycles charged per inter-canister call (IC: 260000); ic0.cost_call adds the per-byte fees and the response reservation",
		func(c *Config) *uint64 { return &c.Host.Fees.Call }),
	count("fees.call_per_byte", "", "cycles charged per byte of a call's method name and argument and of its response (IC: 1000; a reply_bytes response is reserved, the unused part refunded)",
		func(c *Config) *uint64 { return &c.Host.Fees.CallPerByte }),
	count("fees.canister_creation", "", "cycles charged to create a canister (management canister)",
		func(c *Config) *uint64 { return &c.Host.Fees.CanisterCreation }),
	count("fees.gib_storage_per_second", "", "storage fee: cycles per GiB of canister memory (heap, stable, module, globals; at least the memory allocation) per second; IC: 127000; 0: free",
		func(c *Config) *uint64 { return &c.Host.Fees.GiBStoragePerSecond }),
	count("fees.compile_per_byte", "", "cycles an install pays per byte of its (decompressed) module for decoding and compiling it, also when the install then fails; 0: free",
		func(c *Config) *uint64 { return &c.Host.Fees.CompilePerByte }),
	{Key: "fees.initial_cycles", Help: "cycles a canister created from the CLI or API starts with (a string: it may exceed 64 bits)", quoted: true,
		get: func(c *Config) string { return c.Host.InitialCycles.String() },
		set: func(c *Config, v string) error {
			a, err := cycles.Parse(strings.ReplaceAll(v, "_", ""))
			if err == nil {
				c.Host.InitialCycles = a
			}
			return err
		}},
	str("fees.provisional", "", "who may mint cycles (install --cycles, the provisional methods of aaaaa-aa): ingress (the operator) or none; canisters never may",
		func(c *Config) *string { return &c.Host.Provisional }, oneOf("ingress", "none")),
}

// Lookup returns the setting with key.
func Lookup(key string) (*Setting, bool) {
	for _, s := range Settings {
		if s.Key == key {
			return s, true
		}
	}
	return nil, false
}

// Default returns the defaults.
func Default() *Config {
	return &Config{
		Isolation:       "sandbox",
		LogLevel:        "warn",
		LogFormat:       "text",
		Listen:          "127.0.0.1:4943",
		RequestTimeout:  5 * time.Minute,
		ShutdownTimeout: 30 * time.Second,
		MaxRequests:     256,
		MaxInstalls:     4,
		MaxConns:        1024,
		RequireToken:    true,
		Host:            host.DefaultConfig(),
		source:          map[string]Source{},
	}
}

// Inputs are what Load combines.
type Inputs struct {
	Home       string              // --home ("" = CORDON_HOME, else the default home)
	ConfigFile string              // --config ("" = CORDON_CONFIG, else <home>/config.toml if it exists)
	Env        func(string) string // os.Getenv (nil = no environment)
	Flags      []Assignment        // flag values, in order (later wins)
}

// Assignment is one key = value from the command line.
type Assignment struct {
	Key, Value string
	Flag       string // the flag it came from, for messages
}

// ParseAssignment parses "key=value" (the --set flag).
func ParseAssignment(s string) (Assignment, error) {
	k, v, ok := strings.Cut(s, "=")
	k = strings.TrimSpace(k)
	if !ok || k == "" {
		return Assignment{}, fmt.Errorf("--set %q: want KEY=VALUE, e.g. limits.update_instructions=1000000", s)
	}
	return Assignment{Key: k, Value: v, Flag: "--set"}, nil
}

// Load builds the effective configuration.
func Load(in Inputs) (*Config, error) {
	env := in.Env
	if env == nil {
		env = func(string) string { return "" }
	}
	c := Default()
	c.Home = in.Home
	if c.Home == "" {
		c.Home = env("CORDON_HOME")
	}
	if c.Home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return nil, fmt.Errorf("find home directory (set CORDON_HOME or --home): %w", err)
		}
		c.Home = filepath.Join(h, ".local", "share", "cordon")
	}
	// Nothing is read from a home another user could have written.
	if err := homedir.Check(c.Home); err != nil {
		return nil, err
	}

	file, explicit := in.ConfigFile, true
	if file == "" {
		file = env("CORDON_CONFIG")
	}
	if file == "" {
		file, explicit = filepath.Join(c.Home, "config.toml"), false
	}
	if err := c.loadFile(file, explicit); err != nil {
		return nil, err
	}
	for _, s := range Settings {
		if v := env(s.Env()); v != "" {
			if err := s.set(c, v); err != nil {
				return nil, fmt.Errorf("%s=%q: %w", s.Env(), v, err)
			}
			c.source[s.Key] = FromEnv
		}
	}
	for _, a := range in.Flags {
		s, ok := Lookup(a.Key)
		if !ok {
			return nil, fmt.Errorf("%s %s: unknown setting%s", a.Flag, a.Key, suggest(a.Key))
		}
		if err := s.set(c, a.Value); err != nil {
			return nil, fmt.Errorf("%s %s=%q: %w", a.Flag, a.Key, a.Value, err)
		}
		c.source[s.Key] = FromFlag
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	c.Host.Home, c.Host.Isolation = c.Home, c.Isolation
	return c, nil
}

// check validates combinations.
func (c *Config) check() error {
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("server.tls_cert and server.tls_key go together: set both or neither")
	}
	return nil
}

// loadFile applies a TOML file. A missing file is an error only when it was
// named explicitly.
func (c *Config) loadFile(path string, explicit bool) error {
	var b []byte
	var err error
	if explicit {
		b, err = homedir.ReadConfigFile(path)
	} else {
		b, err = homedir.ReadFile(path, homedir.File)
	}
	if errors.Is(err, os.ErrNotExist) && !explicit {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read configuration: %w", err)
	}
	var raw map[string]any
	md, err := toml.Decode(string(b), &raw)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return fmt.Errorf("configuration %s: %s", path, pe.ErrorWithPosition())
		}
		return fmt.Errorf("configuration %s: %w", path, err)
	}
	c.File = path
	for _, k := range md.Keys() {
		key := k.String()
		if md.Type(k...) == "Hash" {
			if !slices.Contains([]string{"log", "server", "limits", "sandbox", "fees"}, key) {
				return fmt.Errorf("configuration %s: unknown section [%s]", path, key)
			}
			continue
		}
		s, ok := Lookup(key)
		if !ok {
			return fmt.Errorf("configuration %s: unknown key %s%s", path, key, suggest(key))
		}
		v := lookupRaw(raw, k)
		var text string
		switch v := v.(type) {
		case string:
			text = v
		case int64, bool:
			text = fmt.Sprint(v)
		default:
			return fmt.Errorf("configuration %s: %s: want a string, integer or boolean, got %s", path, key, md.Type(k...))
		}
		if err := s.set(c, text); err != nil {
			return fmt.Errorf("configuration %s: %s = %v: %w", path, key, v, err)
		}
		c.source[s.Key] = FromFile
	}
	return nil
}

func lookupRaw(m map[string]any, k toml.Key) any {
	var cur any = m
	for _, p := range k {
		mm, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	return cur
}

// suggest proposes the closest known key.
func suggest(key string) string {
	best, bestD := "", 4
	for _, s := range Settings {
		if d := distance(key, s.Key); d < bestD {
			best, bestD = s.Key, d
		}
		if i := strings.LastIndex(s.Key, "."); i >= 0 && s.Key[i+1:] == key {
			best, bestD = s.Key, 0
		}
	}
	if best == "" {
		return " (`cordon config show` lists the settings)"
	}
	return fmt.Sprintf(" (did you mean %s?)", best)
}

// distance is the Levenshtein distance.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// TOML renders the configuration as a TOML file, each value annotated with
// its source (and environment variable) when withSources is set.
func (c *Config) TOML(withSources bool) string {
	var b strings.Builder
	section := ""
	for _, s := range Settings {
		sec, name := "", s.Key
		if i := strings.Index(s.Key, "."); i >= 0 {
			sec, name = s.Key[:i], s.Key[i+1:]
		}
		if sec != section {
			fmt.Fprintf(&b, "\n[%s]\n", sec)
			section = sec
		}
		v := s.get(c)
		if s.quoted {
			v = strconv.Quote(v)
		} else {
			v = groupDigits(v)
		}
		line := fmt.Sprintf("%s = %s", name, v)
		if withSources {
			line = fmt.Sprintf("%-44s # %s, %s", line, c.Source(s.Key), s.Env())
		}
		b.WriteString(line + "\n")
	}
	return strings.TrimLeft(b.String(), "\n")
}

// Map returns every key's value and source (for JSON output).
func (c *Config) Map() map[string]map[string]string {
	out := map[string]map[string]string{}
	for _, s := range Settings {
		out[s.Key] = map[string]string{"value": s.get(c), "source": string(c.Source(s.Key)), "env": s.Env()}
	}
	return out
}

// Keys lists the setting keys, sorted (for completion).
func Keys() []string {
	out := make([]string, len(Settings))
	for i, s := range Settings {
		out[i] = s.Key
	}
	sort.Strings(out)
	return out
}

// Setting constructors.

func str(key, flag, help string, field func(*Config) *string, check func(string) error) *Setting {
	return &Setting{Key: key, Flag: flag, Help: help, quoted: true,
		get: func(c *Config) string { return *field(c) },
		set: func(c *Config, v string) error {
			v = strings.TrimSpace(v)
			if check != nil {
				if err := check(v); err != nil {
					return err
				}
			}
			*field(c) = v
			return nil
		}}
}

func oneOf(vals ...string) func(string) error {
	return func(v string) error {
		if slices.Contains(vals, v) {
			return nil
		}
		return fmt.Errorf("want %s", strings.Join(vals, " or "))
	}
}

func boolean(key, flag, help string, field func(*Config) *bool) *Setting {
	return &Setting{Key: key, Flag: flag, Help: help,
		get: func(c *Config) string { return strconv.FormatBool(*field(c)) },
		set: func(c *Config, v string) error {
			b, err := strconv.ParseBool(strings.TrimSpace(v))
			if err != nil {
				return errors.New("want true or false")
			}
			*field(c) = b
			return nil
		}}
}

func duration(key, flag, help string, field func(*Config) *time.Duration) *Setting {
	return &Setting{Key: key, Flag: flag, Help: help, quoted: true,
		get: func(c *Config) string { return field(c).String() },
		set: func(c *Config, v string) error {
			d, err := time.ParseDuration(strings.TrimSpace(v))
			if err != nil || d <= 0 {
				return errors.New("want a positive duration like 30s or 5m")
			}
			*field(c) = d
			return nil
		}}
}

func integer(key, flag, help string, field func(*Config) *int, lo int) *Setting {
	return &Setting{Key: key, Flag: flag, Help: help,
		get: func(c *Config) string { return strconv.Itoa(*field(c)) },
		set: func(c *Config, v string) error {
			// The range, not just its lower bound: a value beyond
			// 32 bits fails the same way as one below it.
			n, err := strconv.ParseInt(digits(v), 10, 32)
			if err != nil || int(n) < lo {
				return fmt.Errorf("want an integer from %d to %d", lo, math.MaxInt32)
			}
			*field(c) = int(n)
			return nil
		}}
}

func count(key, flag, help string, field func(*Config) *uint64) *Setting {
	return &Setting{Key: key, Flag: flag, Help: help,
		get: func(c *Config) string { return strconv.FormatUint(*field(c), 10) },
		set: func(c *Config, v string) error {
			n, err := strconv.ParseUint(digits(v), 10, 64)
			if err != nil {
				return errors.New("want a non-negative integer (underscores allowed: 40_000_000_000)")
			}
			*field(c) = n
			return nil
		}}
}

func size(key, flag, help string, field func(*Config) *uint64) *Setting {
	return &Setting{Key: key, Flag: flag, Help: help,
		get: func(c *Config) string { return strconv.FormatUint(*field(c), 10) },
		set: func(c *Config, v string) error {
			n, err := parseSize(v)
			if err == nil {
				*field(c) = n
			}
			return err
		}}
}

// parseSize reads a byte count: an integer, optionally with a unit (B, KiB,
// MiB, GiB, TiB; KB, MB, GB, TB are the same binary units).
func parseSize(v string) (uint64, error) {
	v = strings.TrimSpace(v)
	num := strings.TrimRightFunc(v, func(r rune) bool { return unicode.IsLetter(r) || r == ' ' })
	unit := strings.ToLower(strings.TrimSpace(v[len(num):]))
	shift := map[string]uint{"": 0, "b": 0, "k": 10, "kb": 10, "kib": 10, "m": 20, "mb": 20, "mib": 20,
		"g": 30, "gb": 30, "gib": 30, "t": 40, "tb": 40, "tib": 40}
	sh, ok := shift[unit]
	n, err := strconv.ParseUint(digits(num), 10, 64)
	if !ok || err != nil {
		return 0, errors.New("want a byte count like 4294967296 or 4GiB")
	}
	if sh > 0 && n > (^uint64(0))>>sh {
		return 0, errors.New("too large")
	}
	return n << sh, nil
}

// digits drops white space and the underscores TOML and Go allow in numbers.
func digits(v string) string { return strings.ReplaceAll(strings.TrimSpace(v), "_", "") }

// groupDigits writes a long integer with TOML's digit separators
// (40_000_000_000); other values are returned as they are.
func groupDigits(v string) string {
	if len(v) < 5 || strings.TrimLeft(v, "0123456789") != "" {
		return v
	}
	var b strings.Builder
	for i, r := range v {
		if i > 0 && (len(v)-i)%3 == 0 {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return b.String()
}
