package cli

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// moduleSetting names the limit on what install and --candid read.
const moduleSetting = "limits.module_bytes"

// readInput reads a file named on the command line (what it is: "module",
// "Candid interface"), at most limit bytes. What is not a regular file (a
// FIFO, /dev/zero, a directory) is refused before anything is read from
// it, and a larger file after limit+1 bytes: a name given by mistake
// costs neither memory without end nor a wait for a writer.
func readInput(path, what string, limit int) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO does not wait for a writer; it is then
	// refused as not a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("read %s %s: not a regular file (%s)", what, path, fileKind(fi.Mode()))
	}
	limit = max(limit, 0)
	tooLarge := func(size string) error {
		return fmt.Errorf("read %s %s: %s, larger than %s (%d bytes; --set %s=SIZE to change it)", what, path, size, moduleSetting, limit, moduleSetting)
	}
	if fi.Size() > int64(limit) {
		return nil, tooLarge(fmt.Sprintf("%d bytes", fi.Size()))
	}
	var buf bytes.Buffer
	buf.Grow(int(fi.Size()) + 1)
	// The file may grow after Stat: read at most one byte beyond limit.
	if _, err := buf.ReadFrom(io.LimitReader(f, int64(limit)+1)); err != nil {
		return nil, fmt.Errorf("read %s %s: %w", what, path, err)
	}
	if buf.Len() > limit {
		return nil, tooLarge("more than that")
	}
	return buf.Bytes(), nil
}

// fileKind says what a file that is not a regular file is.
func fileKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a FIFO"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	case m&fs.ModeSocket != 0:
		return "a socket"
	}
	return "mode " + m.String()
}

// readModule reads install's FILE.wasm or FILE.wasm.gz: raw is what is
// sent to the node (which inflates a gzip'd module itself), wasm the
// module, inflated, both at most limit bytes (limits.module_bytes bounds
// a module after decompression).
func readModule(path string, limit int) (raw, wasm []byte, err error) {
	limit = max(limit, 0)
	raw, err = readInput(path, "module", limit)
	if err != nil {
		return nil, nil, err
	}
	if len(raw) < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
		return raw, raw, nil
	}
	zr, err := gzip.NewReader(bytes.NewReader(raw))
	if err != nil {
		return nil, nil, fmt.Errorf("read module %s: gzip: %w", path, err)
	}
	// Past limit the read stops, before the stream's end (and checksum).
	wasm, err = io.ReadAll(io.LimitReader(zr, int64(limit)+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read module %s: gzip: %w", path, err)
	}
	if len(wasm) > limit {
		return nil, nil, fmt.Errorf("read module %s: larger than %s (%d bytes) once decompressed; --set %s=SIZE to change it", path, moduleSetting, limit, moduleSetting)
	}
	return raw, wasm, nil
}
