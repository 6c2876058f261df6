package host

import (
	"context"
	"encoding/hex"
	"testing"

	"github.com/cordon-dev/cordon/internal/cycles"
)

// upgradeStateWat burns cycles and sets the certified data in
// canister_pre_upgrade (PRE) and canister_post_upgrade (POST); each is
// present only when its placeholder is replaced by a definition.
func upgradeStateWat(pre, post string) string {
	return `
(module
  (import "ic0" "cycles_burn128" (func $burn (param i64 i64 i32)))
  (import "ic0" "certified_data_set" (func $certify (param i32 i32)))
  (memory 1)
  (data (i32.const 0) "pre")
  (data (i32.const 8) "post")
  ` + pre + `
  ` + post + `
)`
}

const (
	preBurns = `(func (export "canister_pre_upgrade")
    (call $burn (i64.const 0) (i64.const 1000000000000) (i32.const 64))
    (call $certify (i32.const 0) (i32.const 3)))`
	postBurns = `(func (export "canister_post_upgrade")
    (call $burn (i64.const 0) (i64.const 2000000000000) (i32.const 64)))`
	postCertifies = `(func (export "canister_post_upgrade")
    (call $certify (i32.const 8) (i32.const 4)))`
)

// What canister_pre_upgrade burns and certifies is the canister's system
// state, which the upgrade keeps: it used to be dropped (the cycles stayed
// in the balance though burned, and the certified data was lost).
func TestUpgradeKeepsPreUpgradeSystemState(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		post      string
		burned    uint64 // by the two hooks
		certified string
	}{
		{"pre only", "", 1_000_000_000_000, "pre"},
		{"both burn", postBurns, 3_000_000_000_000, "pre"},
		{"post certifies last", postCertifies, 1_000_000_000_000, "post"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			id := f.install(mustWat(t, upgradeStateWat(preBurns, "")), nil)
			before, err := f.node.Status(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			f.upgrade(id, mustWat(t, upgradeStateWat("", tc.post)))
			after, err := f.node.Status(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			want := cycles.New(tc.burned)
			if spent := before.Balance.SaturatingSub(after.Balance); spent.Cmp(want) < 0 {
				t.Errorf("the upgrade took %s cycles from the balance; its hooks burned %s", spent, want)
			}
			if got, _ := after.CyclesBurned.Sub(before.CyclesBurned); got.Cmp(want) < 0 {
				t.Errorf("%s cycles booked as burned; the hooks burned %s", got, want)
			}
			if after.CertifiedData != hex.EncodeToString([]byte(tc.certified)) {
				t.Errorf("certified data %q, want hex of %q", after.CertifiedData, tc.certified)
			}
			f.checkConservation()
		})
	}
}
