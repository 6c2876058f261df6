package candid

import (
	"fmt"
	"os"
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
)

const exampleDid = `
// A user of the service.
type user = record { name : text; age : nat8 };
type tree = variant {
  leaf : int;
  branch : record { left : tree; val : int; right : tree };
};
/* Mutually recursive, through an alias: */
type A = B;
type B = opt A;
type node = record { head : nat; tail : list };
type list = opt node;
type cb = func (nat) -> ();
type s = service { f : cb; g : (list) -> (B, tree) query };

service counter : (init : nat, owner : opt principal) -> {
  add : (u : user) -> (id : nat64);
  "get user" : (nat64) -> (opt user) query;
  peek : () -> (nat) composite_query;
  log : (text) -> () oneway;
  callback : cb;
  sub : (s) -> ();
}
`

func TestParseService(t *testing.T) {
	s, err := ParseService(exampleDid)
	if err != nil {
		t.Fatal(err)
	}
	if !s.HasInit || len(s.InitArgs) != 2 || s.InitArgs[0].Kind != KindNat || s.InitArgs[1].String() != "opt principal" {
		t.Errorf("init args = %v (HasInit %v)", s.InitArgs, s.HasInit)
	}
	var names []string
	for _, m := range s.Methods() {
		names = append(names, m.Name)
	}
	if got := strings.Join(names, ","); got != "add,callback,get user,log,peek,sub" {
		t.Errorf("methods = %s", got)
	}
	tests := []struct {
		method, sig string
		query       bool
	}{
		{"add", "func (record { age : nat8; name : text }) -> (nat64)", false},
		{"get user", "func (nat64) -> (opt record { age : nat8; name : text }) query", true},
		{"peek", "func () -> (nat) composite_query", true},
		{"log", "func (text) -> () oneway", false},
		{"callback", "func (nat) -> ()", false},
	}
	for _, tt := range tests {
		m, ok := s.Method(tt.method)
		if !ok {
			t.Errorf("method %q missing", tt.method)
			continue
		}
		if got := m.Type.String(); got != tt.sig {
			t.Errorf("%s: %s, want %s", tt.method, got, tt.sig)
		}
		if m.IsQuery() != tt.query {
			t.Errorf("%s: IsQuery = %v", tt.method, m.IsQuery())
		}
	}
	if m, _ := s.Method("log"); !m.HasMode(ModeOneway) {
		t.Error("log is not oneway")
	}
	// Recursive definitions are pointer cycles; aliases share their target.
	a, _ := s.Lookup("A")
	b, _ := s.Lookup("B")
	if a != b || a.Kind != KindOpt || a.Elem != b {
		t.Errorf("A = %v, B = %v: want the same μ opt type", a, b)
	}
	list, _ := s.Lookup("list")
	if f, ok := list.Elem.Field(Hash("tail")); !ok || f.Type != list {
		t.Errorf("list.tail is not list")
	}
	tree, _ := s.Lookup("tree")
	if got := tree.String(); got != "variant { branch : record { val : int; left : tree; right : tree }; leaf : int }" {
		t.Errorf("tree = %s", got)
	}
	// Values parse at the method's types, with names from the .did.
	m, _ := s.Method("add")
	args, err := ParseArgsTyped(`(record { name = "ann"; age = 30 })`, m.Args())
	if err != nil {
		t.Fatal(err)
	}
	if got := args.String(); got != `(record { age = 30 : nat8; name = "ann" })` {
		t.Errorf("args = %s", got)
	}
}

func TestParseServiceForms(t *testing.T) {
	tests := []struct {
		name, did string
		methods   int
		init      bool
	}{
		{"empty file", "", 0, false},
		{"only comments", "// nothing\n/* here */", 0, false},
		{"only defs", "type t = nat;", 0, false},
		{"defs without trailing semicolon", "type t = nat service : {}", 0, false},
		{"empty service", "service : {}", 0, false},
		{"named service", "service foo : { m : () -> () }", 1, false},
		{"service by name", "type S = service { m : () -> (); n : (nat) -> (nat) }; service : S", 2, false},
		{"constructor by name", "type S = service { m : () -> () }; service : (nat) -> S;", 1, true},
		{"constructor without args", "service : () -> {}", 0, true},
		{"trailing semicolons", "service : { a : () -> (); b : () -> (); };", 2, false},
		{"nat field ids", "type r = record { 0 : nat; 0x10 : text; 1_000 : bool }; service : {}", 0, false},
		{"keyword-named fields", `type r = record { "record" : nat; nat : nat }; service : {}`, 0, false},
		{"method type by name", "type f = func () -> (); service : { m : f }", 1, false},
		{"recursive service", "type s = service { next : () -> (s) }; service : s", 1, false},
		{"method type defined later", "type s = service { m : f }; type f = func () -> (); service : s", 1, false},
		{"method type aliased later", "type s = service { m : g }; type g = f; type f = func () -> (); service : s", 1, false},
		{"recursive class", "service : (s) -> s; type s = service { f : (s) -> () }", 0, false}, // defs must come first: error below
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseService(tt.did)
			if tt.name == "recursive class" {
				if err == nil {
					t.Fatal("accepted definitions after the service")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Methods()) != tt.methods || s.HasInit != tt.init {
				t.Errorf("methods = %d, init = %v", len(s.Methods()), s.HasInit)
			}
		})
	}
}

func TestParseServiceErrors(t *testing.T) {
	tests := []struct {
		name, did, want string
	}{
		{"import", `import "a.did"; service : {}`, "imports are not supported"},
		{"undefined", "service : { m : (foo) -> () }", `undefined type "foo"`},
		{"alias cycle", "type A = B; type B = A; service : {}", "cycle of aliases"},
		{"self alias", "type A = A;", "cycle of aliases"},
		{"duplicate def", "type A = nat; type A = int;", "duplicate definition"},
		{"duplicate field", "type r = record { a : nat; a : int };", "duplicate field"},
		{"hash collision", `type r = record { "a" : nat; 97 : int };`, "same id"},
		{"duplicate method", "service : { m : () -> (); m : () -> () }", "duplicate method"},
		{"duplicate arg name", "service : { m : (a : nat, a : nat) -> () }", "duplicate argument name"},
		{"oneway results", "service : { m : () -> (nat) oneway }", "oneway function cannot have results"},
		{"duplicate mode", "service : { m : () -> () query query }", "duplicate annotation"},
		{"method not func", "type t = nat; service : { m : t }", "not a function type"},
		{"method not func, defined later", "type s = service { m : t }; type t = nat; service : s", "not a function type"},
		{"undefined alias target", "type A = B; type B = C; service : {}", `undefined type "C"`},
		{"service not service", "type t = nat; service : t", "not a service type"},
		{"keyword type name", "type opt = nat;", "keyword"},
		{"variant tuple field", "type v = variant { nat : nat; 5 : int; text };", ""},
		{"bad field id", "type r = record { 4294967296 : nat };", "32-bit"},
		{"garbage", "service : { m : () -> () } extra", "expected end of input"},
		{"unclosed", "service : { m : () -> ()", "expected"},
		{"unclosed comment", "/* /* */ service : {}", "unclosed comment"},
		{"invalid utf8 method", `service : { "\ff" : () -> () }`, "not valid UTF-8"},
		{"invalid utf8 field", `type r = record { "\ff" : nat };`, "not valid UTF-8"},
		{"invalid utf8 case", `type v = variant { "\c3" };`, "not valid UTF-8"},
		{"deep nesting", "type t = " + strings.Repeat("opt ", 5000) + "nat;", "nesting deeper"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseService(tt.did)
			if tt.name == "variant tuple field" {
				// "text" alone is a case named text of type null.
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestParseType(t *testing.T) {
	s, err := ParseService("type user = record { name : text };")
	if err != nil {
		t.Fatal(err)
	}
	typ, err := ParseType("vec user", s)
	if err != nil {
		t.Fatal(err)
	}
	if got := typ.String(); got != "vec record { name : text }" {
		t.Errorf("ParseType = %s", got)
	}
	if _, err := ParseType("vec user", nil); err == nil {
		t.Error("ParseType resolved an undefined name")
	}
}

// A canister's candid:service metadata (up to limits.module_bytes) is parsed
// by every `cordon call` and `cordon query`, and its candid:args by install:
// a chain of definitions (type a0 = opt a1; type a1 = opt a2; ...) must not
// take a stack frame per definition. 1.2 M of them (33 MB) overflowed Go's
// 1 GB stack, a fatal error that no recover catches; so a child process
// parses 100 000 (2.5 MB) with a 16 MiB stack, and must live to say so.
func TestParseServiceDefinitionChainStack(t *testing.T) {
	if os.Getenv("CANDID_CHAIN_CHILD") == "1" {
		debug.SetMaxStack(16 << 20)
		const n = 100_000
		var opts, aliases strings.Builder
		for i := 0; i < n; i++ {
			fmt.Fprintf(&opts, "type a%d = opt a%d;\n", i, i+1)
			fmt.Fprintf(&aliases, "type b%d = b%d;\n", i, i+1)
		}
		fmt.Fprintf(&opts, "type a%d = nat;\n", n)
		fmt.Fprintf(&aliases, "type b%d = nat;\n", n)
		s, err := ParseService(opts.String() + "service : { m : (a0) -> () }")
		if err != nil {
			fmt.Printf("ParseService: %.200v\n", err)
			return
		}
		// The type is as deep as the chain: what uses it is bounded.
		m, _ := s.Method("m")
		_, err = EncodeArgs(Args{Types: m.Args(), Values: []Value{Opt{}}})
		fmt.Printf("EncodeArgs at the chain's type: %.200v\n", err)
		ts, err := ParseTypes(opts.String() + "(a0)")
		fmt.Printf("ParseTypes: %d types, %.200v\n", len(ts), err)
		ts, err = ParseTypes(aliases.String() + "(b0)")
		if err == nil && ts[0].Kind != KindNat {
			err = fmt.Errorf("b0 is %s, not nat", ts[0])
		}
		fmt.Printf("ParseTypes of aliases: %.200v\n", err)
		fmt.Println("the child parsed the chains")
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestParseServiceDefinitionChainStack$", "-test.count=1")
	cmd.Env = append(os.Environ(), "CANDID_CHAIN_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "the child parsed the chains") {
		t.Fatalf("parsing chains of 100 000 definitions: %v\n%.600s", err, out)
	}
	for _, want := range []string{"EncodeArgs at the chain's type: candid: encode: argument 0: invalid type: ", "ParseTypes: 1 types, <nil>", "ParseTypes of aliases: <nil>"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the child did not print %q:\n%.600s", want, out)
		}
	}
}
