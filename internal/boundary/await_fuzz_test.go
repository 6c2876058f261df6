package boundary

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/engine"
	"github.com/cordon-dev/cordon/internal/state"
)

// FuzzAwait: the host's other receiving paths (FuzzRecv and FuzzInflight
// have the Output ones) on arbitrary packets: a new sandbox's Ready, a
// compiler's Compiled for a module of 100 bytes, a Loaded, a Pong. Each
// returns, without panicking; what it accepts is what it asked for (a
// Compiled within the limits, the module's hash), and its errors are
// violations, the sandbox's own Error answer, or the connection's end.
func FuzzAwait(f *testing.F) {
	stream := func(ps ...[]byte) []byte {
		var out []byte
		for _, p := range ps {
			out = binary.LittleEndian.AppendUint16(out, uint16(len(p)))
			out = append(out, p...)
		}
		return out
	}
	body := func(k Kind, id uint64, b []byte) []byte { return hdr(k, 0, id, uint64(len(b)), b) }
	comp := EncodeCompiled(&Compiled{Info: engine.Info{HasMemory: true, CandidService: "service : {}",
		Methods: map[string]engine.MethodKind{"inc": engine.UpdateMethod}}, GlobalTypes: []state.GlobalType{state.GlobalI32}, Artifact: []byte("art")})
	log := body(KindLog, 0, EncodeLog(LogLine{Level: LogInfo, Text: "hi"}))
	f.Add(uint8(0), stream(log, body(KindReady, 0, EncodeReady(ModeCanister))))
	f.Add(uint8(1), stream(hdr(KindCompiled, 0, 1, uint64(len(comp)), comp[:40]), hdr(KindCont, 0, 1, 40, comp[40:])))
	f.Add(uint8(1), stream(log, body(KindCompiled, 1, comp)))
	f.Add(uint8(2), stream(body(KindLoaded, 1, EncodeHash([32]byte{7}))))
	f.Add(uint8(3), stream(body(KindError, 1, EncodeError(&RemoteError{Code: ErrArtifact, Message: "stale"})), body(KindPong, 1, nil)))
	lim := engine.DefaultModuleLimits()
	f.Fuzz(func(t *testing.T, which uint8, b []byte) {
		host, sb := pair(t)
		feed(sb, b)
		host.Raw().SetDeadline(time.Now().Add(5 * time.Second))
		var err error
		switch which % 4 {
		case 0:
			err = host.AwaitReady(ModeCanister, nil)
		case 1:
			var c *Compiled
			c, err = host.AwaitCompiled(1, lim, 100, 1<<10, nil)
			if err == nil {
				if verr := ValidateCompiled(lim, 100, 1<<10, c); verr != nil {
					t.Fatalf("an invalid Compiled accepted: %v", verr)
				}
			}
		case 2:
			err = host.AwaitLoaded(1, [32]byte{7}, nil)
		case 3:
			err = host.AwaitPong(1, nil)
		}
		var v *Violation
		var re *RemoteError
		if err != nil && !errors.As(err, &v) && !errors.As(err, &re) && !errors.Is(err, ErrClosed) {
			t.Fatalf("error of no expected kind: %v", err)
		}
	})
}
