package confine

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// What FormatFailure (and early.c's die, the same format) sends,
// ParseFailure reads back; a step too long or not printable is cut and
// masked to fit, never sent as is.
func TestFailureRoundTrip(t *testing.T) {
	for _, c := range []struct {
		layer uint64
		step  string
		errno unix.Errno
	}{
		{LLandlock, "restrict self", unix.EPERM},
		{LSeccomp, "load filter", unix.EACCES},
		{0, "bad configuration argument", unix.EINVAL},
		{LRlimits, "RLIMIT_AS", 0},
		{LSeccomp, "build filter: \x00\n\x1b[2J" + strings.Repeat("x", 2*MaxReady), 0},
	} {
		b := FormatFailure(c.layer, c.step, c.errno)
		if len(b) > MaxReady || !IsFailure([]byte(b)) {
			t.Fatalf("%.40q: packet %q", c.step, b)
		}
		f, err := ParseFailure([]byte(b))
		if err != nil {
			t.Fatalf("%.40q: %v", c.step, err)
		}
		want := []byte(c.step)
		for i, ch := range want {
			if ch < 0x20 || ch > 0x7e {
				want[i] = '?'
			}
		}
		if !strings.HasPrefix(string(want), f.Step) || len(f.Step) < min(len(want), MaxReady/2) {
			t.Fatalf("%.40q: step decoded as %.40q", c.step, f.Step)
		}
		if f.Layer != c.layer || f.Errno != c.errno {
			t.Fatalf("%.40q: decoded %+v", c.step, f)
		}
	}
}

// The host reads the packet from the sandbox: anything but one layer bit
// of the sandbox's own, an errno below 4096 and a printable step is
// refused, with no more than a bounded quote of it.
func TestParseFailureHostile(t *testing.T) {
	for _, b := range []string{
		"",
		"cordon-failed",
		"cordon-failedX 0 0 x",
		"cordon-ready 0x3ff 7",
		"cordon-failed 0x100 1",
		"cordon-failed 0x100 1 ",
		"cordon-failed 0x300 1 two bits",
		"cordon-failed 0x400 1 setuid is not a layer of its own",
		"cordon-failed 0x4000000000000000 1 learn",
		"cordon-failed 18446744073709551616 1 overflow",
		"cordon-failed 0x100 4096 errno",
		"cordon-failed 0x100 -1 errno",
		"cordon-failed 0x100 0x1 hex errno",
		"cordon-failed 0x100 1 tab\there",
		"cordon-failed 0x100 1 \xff\xfe",
		"cordon-failed 0 0 " + strings.Repeat("a", MaxReady),
		"cordon-failed " + strings.Repeat("9", 300) + " 1 x",
	} {
		f, err := ParseFailure([]byte(b))
		if err == nil {
			t.Errorf("%.40q accepted: %+v", b, f)
			continue
		}
		if len(err.Error()) > 80 {
			t.Errorf("%.40q: error of %d bytes: %v", b, len(err.Error()), err)
		}
	}
}

// Whatever the sandbox sends, ParseFailure returns without panicking, and
// what it accepts is within its bounds and encodes back to itself.
func FuzzParseFailure(f *testing.F) {
	f.Add([]byte("cordon-failed 0x100 1 restrict self"))
	f.Add([]byte("cordon-failed 0 22 bad configuration argument"))
	f.Add([]byte("cordon-failed 0x200 13 load filter"))
	f.Add([]byte("cordon-ready 0x3ff 7"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fl, err := ParseFailure(b)
		if err != nil {
			return
		}
		if fl.Layer&^childLayers != 0 || fl.Layer&(fl.Layer-1) != 0 || fl.Errno > maxErrno || fl.Step == "" || len(fl.Step) > MaxReady {
			t.Fatalf("%q accepted as %+v", b, fl)
		}
		again, err := ParseFailure([]byte(FormatFailure(fl.Layer, fl.Step, fl.Errno)))
		if err != nil || again != fl {
			t.Fatalf("%q: %+v encodes to %+v, %v", b, fl, again, err)
		}
	})
}
