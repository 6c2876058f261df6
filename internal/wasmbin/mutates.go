package wasmbin

import "errors"

// errMutates stops the body walk at the first instance-mutating instruction.
var errMutates = errors.New("mutates")

// ChangesTablesOrSegments reports whether any function body of b (a module
// that decodes with c) can change an instance's state other than its linear
// memory and globals: a table (table.set, table.grow, table.fill,
// table.copy, table.init) or a segment's liveness (elem.drop, data.drop).
// An engine may keep the instance of a module that has none of them between
// executions and reset only its memory and globals (engine's kept
// instances); it is decided statically, once per module. An error means the
// bodies did not decode: the caller must assume they do change them.
func (c Config) ChangesTablesOrSegments(b []byte) (bool, error) {
	c = c.normalized()
	m, err := c.Decode(b)
	if err != nil {
		return true, err
	}
	err = forEachBody(b, m, func(i int, d *bodyDecoder, bodyStart, bodyEnd int) error {
		if _, _, err := d.localDecls(); err != nil {
			return err
		}
		for {
			in, done, err := d.next()
			if err != nil {
				return err
			}
			if mutatesInstance(b, in) {
				return errMutates
			}
			if done {
				return nil
			}
		}
	})
	if errors.Is(err, errMutates) {
		return true, nil
	}
	if err != nil {
		return true, err
	}
	return false, nil
}

// mutatesInstance reports whether one decoded instruction is table.set or
// one of the 0xFC table/segment instructions that change instance state.
func mutatesInstance(b []byte, in instr) bool {
	if in.pos >= len(b) || in.end > len(b) || in.pos >= in.end {
		return true // cannot happen for a decoded instruction; be safe
	}
	switch b[in.pos] {
	case 0x26: // table.set
		return true
	case 0xfc:
		r := &reader{b: b, pos: in.pos + 1, end: in.end, section: "code"}
		sub, err := r.u32("0xfc sub-opcode")
		if err != nil {
			return true
		}
		switch sub {
		case 9, // data.drop
			12, // table.init
			13, // elem.drop
			14, // table.copy
			15, // table.grow
			17: // table.fill
			return true
		}
	}
	return false
}
