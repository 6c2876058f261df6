package host

import "fmt"

// The provisional methods of aaaaa-aa create cycles from nothing. On the IC
// only principals on the subnet's provisional whitelist may call them, and
// a canister never is one (others get "Sender not authorized to use
// method."); here the node's operator (the CLI or API caller
// who installs with --cycles) is the only one who may mint, and a node can
// refuse even that (Config.Provisional).

// Provisional settings.
const (
	ProvisionalIngress = "ingress" // the operator may mint (install --cycles); canisters never
	ProvisionalNone    = "none"    // nobody mints: only the initial balance
)

// isProvisional reports whether a management method mints cycles.
func isProvisional(method string) bool {
	return method == "provisional_create_canister_with_cycles" || method == "provisional_top_up_canister"
}

// checkProvisional refuses a provisional method to anything but an ingress
// message the node's setting allows. Every request that reaches the
// management canister comes from a canister, so this refuses all of them
// today; it is written against m.ingress so that an ingress path added
// later gets the setting, not a loophole.
func (n *Node) checkProvisional(m *message) error {
	if !isProvisional(m.method) {
		return nil
	}
	// The IC's answer to a sender outside the whitelist: DESTINATION_INVALID
	// (IC0302, method not found) and this message; cordon says why after it.
	if !m.ingress {
		return rejectf(DestinationInvalid, "Sender not authorized to use method. (%s mints cycles: only the node's operator may, by ingress; canister %s may not)", m.method, m.caller)
	}
	if n.cfg.Provisional == ProvisionalNone {
		return rejectf(DestinationInvalid, "Sender not authorized to use method. (%s is disabled on this node: fees.provisional = none)", m.method)
	}
	return nil
}

// checkMint refuses a canister created from the CLI or API with a chosen
// balance when the node mints nothing.
func (n *Node) checkMint(opts CreateOptions) error {
	if opts.Cycles != nil && opts.Minted && n.cfg.Provisional == ProvisionalNone {
		return rejectf(CanisterReject, "creating a canister with %s cycles of your choosing is disabled on this node (fees.provisional = none): leave out the cycles to get the initial balance", *opts.Cycles)
	}
	return nil
}

// CheckIsolation refuses an in-process canister on a strict sandboxed node,
// unless the node allows it (Sandbox.AllowInProcess): strict mode promises
// that every canister is confined, and an in-process one is confined only
// by wasmtime.
func (n *Node) CheckIsolation(isolation string) error {
	if isolation != "inprocess" || n.cfg.Isolation != "sandbox" || !n.cfg.Sandbox.Strict || n.cfg.Sandbox.AllowInProcess {
		return nil
	}
	return rejectf(CanisterReject, "in-process canisters are refused on a strict node: they run unconfined in the host process (allow them with sandbox.allow_inprocess = true)")
}

// validProvisional checks a Provisional setting.
func validProvisional(s string) error {
	switch s {
	case "", ProvisionalIngress, ProvisionalNone:
		return nil
	}
	return fmt.Errorf("provisional %q: want ingress or none", s)
}
