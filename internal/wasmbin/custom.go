package wasmbin

// FindCustomSection returns the data of the first custom section named
// name (a view of b, not a copy), reading nothing of the module but its
// preamble, each section's id and size, and custom sections' names.
//
// It is for where canister code must not be parsed (DESIGN §2: the host,
// and the CLI that may open the node in-process, parse no canister Wasm
// in sandbox mode; Decode decodes every section's structure): reading the
// metadata a module declares, like candid:args, touches no type, import,
// code or data. Its work is bounded by len(b): each section it skips is at
// least two bytes. A module it reads need not be valid; installing it
// checks that.
func FindCustomSection(b []byte, name string) ([]byte, bool, error) {
	r := &reader{b: b, end: len(b), section: "header"}
	if err := checkHeader(r, b); err != nil {
		return nil, false, err
	}
	r.pos = headerSize
	for r.pos < len(b) {
		off := r.pos
		r.section = "module"
		id, _ := r.byte("section id") // cannot fail: pos < len
		size, err := r.u32("section size")
		if err != nil {
			return nil, false, err
		}
		if uint64(size) > uint64(r.remaining()) {
			return nil, false, r.fail(off, ErrTruncated, "section size %d exceeds the %d remaining bytes", size, r.remaining())
		}
		end := r.pos + int(size)
		if SectionID(id) == SectionCustom {
			sr := &reader{b: b, pos: r.pos, end: end, section: "custom"}
			n, err := sr.u32("custom section name length")
			if err != nil {
				return nil, false, err
			}
			if uint64(n) > uint64(sr.remaining()) {
				return nil, false, sr.fail(sr.pos, ErrTruncated, "custom section name: need %d bytes, %d remain", n, sr.remaining())
			}
			if int(n) == len(name) && string(b[sr.pos:sr.pos+int(n)]) == name {
				return b[sr.pos+int(n) : end : end], true, nil
			}
		}
		r.pos = end
	}
	return nil, false, nil
}
