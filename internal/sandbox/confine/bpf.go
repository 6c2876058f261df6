package confine

import (
	"encoding/binary"
	"errors"

	"golang.org/x/sys/unix"
)

// SeccompData mirrors struct seccomp_data, what a filter sees.
type SeccompData struct {
	Nr   int32
	Arch uint32
	IP   uint64
	Args [6]uint64
}

func (d SeccompData) bytes() []byte {
	b := make([]byte, 64)
	binary.LittleEndian.PutUint32(b[0:], uint32(d.Nr))
	binary.LittleEndian.PutUint32(b[4:], d.Arch)
	binary.LittleEndian.PutUint64(b[8:], d.IP)
	for i, a := range d.Args {
		binary.LittleEndian.PutUint64(b[16+8*i:], a)
	}
	return b
}

// RunFilter interprets a seccomp filter the way the kernel does, for the
// instructions BuildFilter emits. Tests use it to check the filter against
// recorded system calls and crafted ones.
func RunFilter(f []unix.SockFilter, d SeccompData) (uint32, error) {
	data := d.bytes()
	var a uint32
	for pc := 0; pc < len(f); pc++ {
		in := f[pc]
		switch in.Code {
		case unix.BPF_LD | unix.BPF_W | unix.BPF_ABS:
			if in.K%4 != 0 || int(in.K)+4 > len(data) {
				return 0, errors.New("bad load")
			}
			a = binary.LittleEndian.Uint32(data[in.K:])
		case unix.BPF_ALU | unix.BPF_AND | unix.BPF_K:
			a &= in.K
		case unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, unix.BPF_JMP | unix.BPF_JGE | unix.BPF_K:
			var cond bool
			if in.Code&0xf0 == unix.BPF_JEQ {
				cond = a == in.K
			} else {
				cond = a >= in.K
			}
			if cond {
				pc += int(in.Jt)
			} else {
				pc += int(in.Jf)
			}
		case unix.BPF_RET | unix.BPF_K:
			return in.K, nil
		default:
			return 0, errors.New("unsupported instruction")
		}
	}
	return 0, errors.New("fell off the end")
}

// Data converts a notification to what the filter saw.
func (n Notification) Data() SeccompData {
	return SeccompData{Nr: n.Nr, Arch: n.Arch, IP: n.IP, Args: n.Args}
}
