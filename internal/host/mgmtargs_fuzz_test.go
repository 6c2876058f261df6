package host

import (
	"testing"

	"github.com/cordon-dev/cordon/pkg/candid"
)

// FuzzManagementArgs: the management canister's arguments are bytes from
// canisters and users. Whatever they are, for every method: the target
// read ahead of the call (ManagementTarget: a single field, to count the
// call against its canister and refuse an uncontrolled caller early)
// never names another canister than the full decoding does, and reading
// the decoded argument (the fields managementStep reads) never panics.
func FuzzManagementArgs(f *testing.F) {
	svc, err := managementService()
	if err != nil {
		f.Fatal(err)
	}
	methods := svc.Methods()
	for _, seed := range []struct{ method, text string }{
		{"install_code", `(record { mode = variant { upgrade = opt record { skip_pre_upgrade = opt true; wasm_memory_persistence = opt variant { keep } } };
			canister_id = principal "rwlgt-iiaaa-aaaaa-aaaaa-cai"; wasm_module = blob "\00asm\01\00\00\00"; arg = blob "DIDL\00\00" })`},
		{"update_settings", `(record { canister_id = principal "rwlgt-iiaaa-aaaaa-aaaaa-cai"; settings = record {
			controllers = opt vec { principal "aaaaa-aa" }; freezing_threshold = opt 7; wasm_memory_limit = opt 65536;
			log_visibility = opt variant { allowed_viewers = vec { principal "2vxsx-fae" } };
			environment_variables = opt vec { record { name = "a"; value = "b" }; record { name = "a"; value = "c" } } } })`},
		{"install_chunked_code", `(record { mode = variant { install }; target_canister = principal "rwlgt-iiaaa-aaaaa-aaaaa-cai";
			store_canister = opt principal "aaaaa-aa"; chunk_hashes_list = vec { record { hash = blob "\01" } }; wasm_module_hash = blob "\02"; arg = blob "" })`},
		{"provisional_create_canister_with_cycles", `(record { amount = opt 1_000_000_000_000_000_000_000_000_000_000_000_000_000; specified_id = opt principal "aaaaa-aa" })`},
	} {
		for k, m := range methods {
			if m.Name != seed.method {
				continue
			}
			a, err := candid.ParseArgsTyped(seed.text, m.Args())
			if err != nil {
				f.Fatalf("%s: %v", seed.method, err)
			}
			b, err := candid.EncodeArgs(a)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(uint8(k), b)
		}
	}
	f.Fuzz(func(t *testing.T, which uint8, arg []byte) {
		m := methods[int(which)%len(methods)]
		early, earlyOK := ManagementTarget(m.Name, arg)
		args, err := mgmtDecoder.DecodeAs(arg, m.Args())
		if err != nil {
			return
		}
		var r candid.Record
		if len(args.Values) > 0 {
			r, _ = args.Values[0].(candid.Record)
		}
		field := "canister_id"
		if m.Name == "install_chunked_code" {
			field = "target_canister"
		}
		if p, ok := principalField(r, field); ok && earlyOK && !p.Equal(early) {
			t.Fatalf("%s: the call is about %s, counted as about %s", m.Name, p, early)
		}
		// What managementStep and its helpers read of it.
		if s, ok := settingsField(r); ok && s.envVars != nil {
			_, _ = checkEnvVars(s.envVars)
		}
		if v, ok := r.GetNamed("mode"); ok {
			_, _ = installMode(v)
		}
		for _, name := range []string{"wasm_module", "arg", "chunk", "wasm_module_hash"} {
			_, _ = blobField(r, name)
		}
		for _, name := range []string{"amount", "freezing_threshold"} {
			_, _ = optNat(r, name)
		}
		_, _ = optPrincipal(r, "specified_id")
		_, _ = optPrincipal(r, "store_canister")
	})
}
