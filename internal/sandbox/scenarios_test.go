package sandbox

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/cordon-dev/cordon/internal/sandbox/confine"
)

// child is the sandbox side of a test scenario.
type child struct {
	conn  *net.UnixConn
	files []*os.File
	args  []string
}

func (c *child) send(format string, a ...any) {
	_, _ = c.conn.Write([]byte(fmt.Sprintf(format, a...)))
}

func (c *child) recv() string {
	b := make([]byte, 1<<16)
	n, err := c.conn.Read(b)
	if err != nil {
		return ""
	}
	return string(b[:n])
}

var scenarios = map[string]func(*child) int{
	// echo: reply to each message with the same bytes until EOF.
	"echo": func(c *child) int {
		for {
			m := c.recv()
			if m == "" {
				return 0
			}
			c.send("%s", m)
		}
	},
}

func init() {
	// canister: wait for a go message (through recvmsg, as the worker
	// does), run the canisters in files[i] (args[i] names the kind:
	// counter or traps), report each (sendmsg), then wait for EOF so the
	// host can inspect the process.
	scenarios["canister"] = func(c *child) int {
		buf, oob := make([]byte, 64), make([]byte, 64)
		if _, _, _, _, err := c.conn.ReadMsgUnix(buf, oob); err != nil {
			return 1
		}
		for i, f := range c.files {
			res, err := runCanister(c.args[i], f)
			if err != nil {
				res = "error " + err.Error()
			} else {
				res = "ok " + res
			}
			if _, _, err := c.conn.WriteMsgUnix([]byte(res), nil, nil); err != nil {
				return 1
			}
		}
		// What the canister worker does once its module is loaded.
		if err := confine.ForbidNewCode(); err != nil {
			fmt.Fprintln(os.Stderr, "forbid new code:", err)
			return 1
		}
		c.recv()
		return 0
	}
}

func init() {
	// hang: report ready, then block forever (not reading).
	scenarios["hang"] = func(c *child) int {
		c.send("hanging")
		select {}
	}
	// crash: a nil dereference in native code terms (Go panics, exit 2).
	scenarios["crash"] = func(c *child) int {
		var p *int
		c.send("crashing")
		return *p
	}
	// membomb MiB: touch that much memory.
	scenarios["membomb"] = func(c *child) int {
		n, _ := strconv.Atoi(c.args[0])
		c.send("allocating")
		var keep [][]byte
		for i := 0; i < n; i++ {
			b := make([]byte, 1<<20)
			for j := 0; j < len(b); j += 4096 {
				b[j] = 1
			}
			keep = append(keep, b)
		}
		c.send("survived %d", len(keep))
		c.recv()
		return 0
	}
	// grow MiB: at each message, touch that much more memory and say so.
	scenarios["grow"] = func(c *child) int {
		n, _ := strconv.Atoi(c.args[0])
		var keep [][]byte
		c.send("ready")
		for c.recv() != "" {
			for i := 0; i < n; i++ {
				b := make([]byte, 1<<20)
				for j := 0; j < len(b); j += 4096 {
					b[j] = 1
				}
				keep = append(keep, b)
			}
			c.send("grown %d", len(keep))
		}
		return 0
	}
	// flood N: write N lines to stderr.
	scenarios["flood"] = func(c *child) int {
		n, _ := strconv.Atoi(c.args[0])
		for i := 0; i < n; i++ {
			fmt.Fprintf(os.Stderr, "line %d \x1b[31mred\x1b[0m\n", i)
		}
		fmt.Fprintln(os.Stderr, strings.Repeat("x", 5000))
		c.send("flooded")
		c.recv()
		return 0
	}
	// spin: burn CPU until killed.
	scenarios["spin"] = func(c *child) int {
		c.send("spinning")
		x := 0
		for {
			x++
		}
	}
}
