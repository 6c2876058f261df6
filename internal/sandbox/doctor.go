package sandbox

import (
	"strings"

	"golang.org/x/sys/unix"
)

// LayerReport is one line of Doctor's report.
type LayerReport struct {
	Layer     Layer
	Available bool
	Detail    string
}

// Report is what this kernel and this user allow, layer by layer.
type Report struct {
	Layers   []LayerReport
	Rootless bool   // no CAP_SYS_ADMIN in the host's user namespace
	Kernel   string // uname release and version
}

// Missing lists the unavailable layers.
func (r Report) Missing() []Layer {
	var out []Layer
	for _, l := range r.Layers {
		if !l.Available {
			out = append(out, l.Layer)
		}
	}
	return out
}

// Doctor probes this kernel and user afresh (it starts tiny probe processes
// in new namespaces, checks cgroup writability, Landlock's ABI and seccomp's
// user notifications) and reports every layer. The result also replaces the
// cached availability Start uses.
func Doctor() Report {
	a := probe()
	availMu.Lock()
	availCache = a
	availMu.Unlock()
	r := Report{Rootless: a.rootless, Kernel: kernelVersion()}
	for _, l := range AllLayers {
		r.Layers = append(r.Layers, LayerReport{Layer: l, Available: a.layers[l], Detail: a.detail[l]})
	}
	return r
}

func kernelVersion() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	cstr := func(b []byte) string { s, _, _ := strings.Cut(string(b), "\x00"); return s }
	return cstr(u.Sysname[:]) + " " + cstr(u.Release[:]) + " " + cstr(u.Machine[:])
}
