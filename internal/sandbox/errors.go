package sandbox

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// LayerError is a failure of one confinement layer: a sandbox that could
// not apply it (its own report, SetupError), a cgroup the host could not
// make or join, or a layer the host's check from outside found not in
// effect. Start's errors wrap it whenever the failing layer is known.
type LayerError struct {
	Layer Layer
	Err   error
}

func (e *LayerError) Error() string { return string(e.Layer) + ": " + e.Err.Error() }
func (e *LayerError) Unwrap() error { return e.Err }

// FailedLayer is the layer an error of Start (or Verify) names, if any.
func FailedLayer(err error) (Layer, bool) {
	var le *LayerError
	if errors.As(err, &le) {
		return le.Layer, true
	}
	return "", false
}

// SetupError is a sandbox's report that a step of its confinement failed
// before it ran anything of the host's (confine.Failure, decoded with
// bounds). It wraps the errno.
type SetupError struct {
	Step  string // printable ASCII, bounded (confine.ParseFailure)
	Errno syscall.Errno
}

func (e *SetupError) Error() string {
	if e.Errno == 0 {
		return e.Step
	}
	return e.Step + ": " + e.Errno.Error()
}

func (e *SetupError) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}

// childLayer maps the layer bits a sandbox reports to layers.
var childLayer = map[uint64]Layer{
	confine.LPdeathsig: LayerPdeathsig, confine.LFds: LayerFds, confine.LPivot: LayerPivotRoot,
	confine.LUTS: LayerUTSNS, confine.LCgroupNS: LayerCgroupNS, confine.LRlimits: LayerRlimits,
	confine.LCaps: LayerCaps, confine.LNNP: LayerNoNewPrivs, confine.LLandlock: LayerLandlock,
	confine.LSeccomp: LayerSeccomp, confine.LOOM: LayerOOMScore,
}

// childFailure turns a failure packet into Start's error: "confine:
// <layer>: <step>: <errno>", or "confine: <step>: <errno>" for a step of
// no layer (its configuration, the go-ahead).
func childFailure(b []byte) error {
	f, err := confine.ParseFailure(b)
	if err != nil {
		return fmt.Errorf("confine: %w", err)
	}
	se := &SetupError{Step: f.Step, Errno: syscall.Errno(f.Errno)}
	if l, ok := childLayer[f.Layer]; ok {
		return fmt.Errorf("confine: %w", &LayerError{Layer: l, Err: se})
	}
	return fmt.Errorf("confine: %w", se)
}
