package sandbox

import (
	"debug/buildinfo"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
)

// WorkerBinaryName is the worker-only sandbox executable (cmd/cordon-sandbox)
// a host looks for next to its own executable.
const WorkerBinaryName = "cordon-sandbox"

// workerMainPath is the main package a worker-only binary must be built from.
const workerMainPath = "github.com/cordon-dev/cordon/cmd/cordon-sandbox"

// buildStamp, set at link time (-ldflags "-X <buildStampVar>=ID"), names
// the source a binary was built from where Go's own version control stamp
// cannot (a tree with local changes, -buildvcs=false, a build outside git).
// A release builds cordon and cordon-sandbox with the same stamp. Nothing
// reads the variable: the check reads the stamp from the -ldflags a binary's
// build information records, so it can compare another binary's too.
//
//lint:ignore U1000 the linker's -X target; it must exist to be set.
var buildStamp string

const buildStampVar = "github.com/cordon-dev/cordon/internal/sandbox.buildStamp"

// Executable says what a node's sandboxes execute.
type Executable struct {
	Path   string // the file, as named or found ("" = the host's own executable)
	Worker bool   // the worker-only binary, not cordon itself
	Sealed bool   // sandboxes execute a sealed in-memory copy of it
	Build  string // what the same-build check found: "same build (...)", "unverified: ..."
	Note   string // why it was chosen (e.g. why a cordon-sandbox next to the host is not)
}

// String is one line for logs and `cordon doctor`.
func (e Executable) String() string {
	var b strings.Builder
	if e.Path == "" {
		b.WriteString("cordon itself")
	} else {
		b.WriteString(e.Path)
	}
	if e.Sealed {
		b.WriteString(", sealed in-memory copy")
	} else {
		b.WriteString(", executed by path (not sealed)")
	}
	if e.Build != "" {
		b.WriteString("; " + e.Build)
	}
	if e.Note != "" {
		b.WriteString("; " + e.Note)
	}
	return b.String()
}

// buildCheck is the result of comparing two binaries' build information.
type buildCheck int

const (
	buildSame       buildCheck = iota // provably the same source: both stamped alike
	buildUnverified                   // nothing differs, but nothing names the source
	buildDifferent                    // not the same build
	// buildTestHost: the host records no dependencies, as a test binary:
	// nothing to compare. Only an explicit sandbox.binary is used then;
	// a worker found next to a test binary is not, since tests serve
	// their sandboxes from the test binary itself (its TestMain), and a
	// worker left next to it by another build would go unnoticed.
	buildTestHost
)

// hostBuildInfo is the host's own build information (tests replace it).
var hostBuildInfo = debug.ReadBuildInfo

// compareBuilds decides whether side (a sandbox executable) was built from the
// same source as host. What Go records in a binary: the toolchain, the
// module's version, every dependency's version and checksum, the build
// settings (tags, flags, cgo, target), the version control revision and
// whether the tree had local changes. Any difference there is a different
// build. The same source is proven only by a name of the source: a revision
// of a clean tree (Go's default in a git checkout), or a build stamp; without
// one (-buildvcs=false, local changes) two builds that record the same
// settings may still come from different sources: unverified.
func compareBuilds(host, side *debug.BuildInfo) (buildCheck, string) {
	if side == nil {
		return buildDifferent, "no Go build information"
	}
	if host == nil {
		return buildUnverified, "the host has no build information"
	}
	if side.Main.Path != host.Main.Path {
		return buildDifferent, fmt.Sprintf("module %q, the host's is %q", side.Main.Path, host.Main.Path)
	}
	if side.GoVersion != host.GoVersion {
		return buildDifferent, fmt.Sprintf("built by %s, the host by %s", side.GoVersion, host.GoVersion)
	}
	if side.Main.Version != host.Main.Version || side.Main.Sum != host.Main.Sum {
		return buildDifferent, fmt.Sprintf("module version %s, the host's %s", side.Main.Version, host.Main.Version)
	}
	if len(host.Deps) == 0 && len(side.Deps) > 0 {
		// Test binaries record no dependencies: nothing to compare.
		return buildTestHost, "the host records no dependencies (a test binary?)"
	}
	hostDeps := map[string]*debug.Module{}
	for _, d := range host.Deps {
		hostDeps[d.Path] = d
	}
	for _, d := range side.Deps {
		h, ok := hostDeps[d.Path]
		if !ok {
			return buildDifferent, fmt.Sprintf("dependency %s, which the host does not have", d.Path)
		}
		if modString(d) != modString(h) {
			return buildDifferent, fmt.Sprintf("dependency %s, the host has %s", modString(d), modString(h))
		}
	}
	hs, ss := settings(host), settings(side)
	keys := map[string]bool{}
	for k := range hs {
		keys[k] = true
	}
	for k := range ss {
		keys[k] = true
	}
	var diff []string
	for k := range keys {
		if hs[k] != ss[k] {
			diff = append(diff, fmt.Sprintf("%s=%q (host %q)", k, ss[k], hs[k]))
		}
	}
	if len(diff) > 0 {
		sort.Strings(diff)
		return buildDifferent, "build settings differ: " + strings.Join(diff, ", ")
	}
	if st := stampOf(hs); st != "" {
		return buildSame, "same build (stamp " + st + ")"
	}
	if rev := hs["vcs.revision"]; rev != "" && hs["vcs.modified"] == "false" {
		return buildSame, "same build (" + hs["vcs"] + " revision " + rev + ")"
	}
	why := "no version control stamp (-buildvcs=false, or not built in a checkout)"
	if hs["vcs.modified"] == "true" {
		why = "built from a tree with local changes"
	}
	return buildUnverified, "unverified build: the same settings and dependencies, but " + why +
		"; stamp both binaries with -ldflags=-X=" + buildStampVar + "=ID to prove it"
}

func modString(m *debug.Module) string {
	s := m.Path + "@" + m.Version + " " + m.Sum
	if m.Replace != nil {
		s += " => " + modString(m.Replace)
	}
	return s
}

func settings(bi *debug.BuildInfo) map[string]string {
	m := map[string]string{}
	for _, s := range bi.Settings {
		m[s.Key] = s.Value
	}
	return m
}

// stampOf extracts the build stamp from the recorded -ldflags.
func stampOf(s map[string]string) string {
	flags := s["-ldflags"]
	i := strings.Index(flags, buildStampVar+"=")
	if i < 0 {
		return ""
	}
	v := flags[i+len(buildStampVar)+1:]
	if j := strings.IndexAny(v, " \t'\""); j >= 0 {
		v = v[:j]
	}
	return v
}

// readBuildInfo reads the Go build information of a sealed copy (or of the
// file itself when it has none): what is checked is what sandboxes execute.
// It executes nothing.
func readBuildInfo(s *sealedFile) (*debug.BuildInfo, error) {
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return buildinfo.Read(f)
}

// checkWorker checks a sandbox executable against the host's build: it must
// be cmd/cordon-sandbox of the same build.
func checkWorker(s *sealedFile) (buildCheck, string) {
	side, err := readBuildInfo(s)
	if err != nil {
		return buildDifferent, fmt.Sprintf("not a Go executable with build information: %v", err)
	}
	if side.Path != workerMainPath {
		return buildDifferent, fmt.Sprintf("built from %s, not %s", side.Path, workerMainPath)
	}
	host, _ := hostBuildInfo()
	return compareBuilds(host, side)
}

// ErrForeignExecutable: a configured sandbox executable is not cordon's
// worker of the host's build.
var ErrForeignExecutable = errors.New("sandbox executable is not from this build of cordon")

// CheckExecutable seals the sandbox executable a node is configured with
// (sandbox.binary) and checks, on the sealed copy, that it is the worker-only
// binary of the host's build. A different build (or not cordon's worker at
// all) is an error wrapping ErrForeignExecutable: the operator named it, so
// the node does not start rather than run something else. An unverified
// build (nothing names the source; see compareBuilds) is accepted, with a
// warning. A copy of the host's own executable is accepted as the host.
func CheckExecutable(path string) (Executable, error) {
	s, err := sealedCopyOf(path)
	if err != nil {
		return Executable{}, err
	}
	e := Executable{Path: path, Sealed: s.fd >= 0}
	if same, err := sameAsSelf(s); err == nil && same {
		e.Build = "a copy of the host's own executable"
		return e, nil
	}
	check, why := checkWorker(s)
	e.Worker, e.Build = true, why
	switch check {
	case buildDifferent:
		return Executable{}, fmt.Errorf("%w: %s: %s", ErrForeignExecutable, path, why)
	case buildUnverified, buildTestHost:
		slog.Warn("sandbox executable: cannot prove it is from this build", "path", path, "why", why)
	}
	return e, nil
}

// sameAsSelf reports whether the sealed file has the host's executable's
// bytes (a copy of it, as tests and rootless hosts use).
func sameAsSelf(s *sealedFile) (bool, error) {
	a, err := os.Stat(s.path)
	if err != nil {
		return false, err
	}
	b, err := os.Stat("/proc/self/exe")
	if err != nil || a.Size() != b.Size() {
		return false, err
	}
	fa, err := os.Open(s.path)
	if err != nil {
		return false, err
	}
	defer fa.Close()
	fb, err := os.Open("/proc/self/exe")
	if err != nil {
		return false, err
	}
	defer fb.Close()
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		na, ea := fullRead(fa, ba)
		nb, _ := fullRead(fb, bb)
		if na != nb || string(ba[:na]) != string(bb[:nb]) {
			return false, nil
		}
		if ea != nil || na == 0 {
			return true, nil
		}
	}
}

func fullRead(f *os.File, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := f.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

var (
	defaultOnce sync.Once
	defaultExe  Executable
	defaultFile *sealedFile // the worker's sealed copy; nil: the host's own
)

// hostDir is the directory of the host's executable (tests replace it).
var hostDir = func() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.Dir(p), nil
}

// DefaultExecutable reports what sandboxes execute when Spec.Binary is
// empty: a cordon-sandbox next to the host's executable if it is the
// worker of the host's build, else the host's own executable. Decided once.
func DefaultExecutable() Executable {
	defaultOnce.Do(func() { defaultExe, defaultFile = findWorker() })
	return defaultExe
}

// findWorker looks for the worker-only binary next to the host's executable.
// Anything wrong with it (a different build, not cordon's worker, not
// executable) falls back to the host's own executable with a warning: the
// worker-only binary only makes sandboxes start faster, and the host's
// executable is always there and always of its own build. An unverified
// build is used (see compareBuilds): a developer's `go build -o bin/
// ./cmd/...` of a changed tree records no revision, and what a stale worker
// could do is bounded as any sandbox's is, since the host trusts nothing a
// sandbox says and checks every layer itself.
func findWorker() (Executable, *sealedFile) {
	self := Executable{Sealed: selfExe() != "/proc/self/exe"}
	dir, err := hostDir()
	if err != nil {
		self.Note = "no worker-only binary: the host's directory is unknown: " + err.Error()
		return self, nil
	}
	path := filepath.Join(dir, WorkerBinaryName)
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		self.Note = "no " + WorkerBinaryName + " next to it (" + dir + ")"
		return self, nil
	}
	fallback := func(why string) (Executable, *sealedFile) {
		slog.Warn("sandbox executable: not using the worker-only binary next to cordon", "path", path, "why", why)
		self.Note = "not using " + path + ": " + why
		return self, nil
	}
	s, err := sealedCopyOf(path)
	if err != nil {
		return fallback(err.Error())
	}
	if s.fd < 0 {
		return fallback("it cannot be sealed: " + s.err.Error())
	}
	check, why := checkWorker(s)
	if check == buildDifferent || check == buildTestHost {
		return fallback(why)
	}
	if check == buildUnverified {
		slog.Debug("sandbox executable: the worker-only binary next to cordon, unverified build", "path", path, "why", why)
	}
	return Executable{Path: path, Worker: true, Sealed: true, Build: why}, s
}
