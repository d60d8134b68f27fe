//! meshdrain-iscsi: a read-only iSCSI target and an initiator speaking RFC 7143 / SBC PDUs.
