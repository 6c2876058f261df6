package host

// SyncFaults is syncFaults (syncfault_test.go) for the external tests of
// the servers in front of a node (storefail_serve_test.go).
var SyncFaults = syncFaults
