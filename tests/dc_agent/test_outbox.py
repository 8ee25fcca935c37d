"""The durable outbox: written before reporting, survives a restart, forgotten only when acknowledged."""

from __future__ import annotations

import stat

from dc_agent.outbox import Entry, Outbox


class TestOutbox:
    def test_put_survives_a_new_instance_and_done_forgets(self, tmp_path):
        """Entries are files: a new Outbox on the same directory (a restart) sees them."""
        box = Outbox(tmp_path)
        box.put(Entry(contract_id="c/1", kind="provisioned", instance_details={"externalId": "vm-1"}))
        box.put(Entry(contract_id="c2", kind="failed", error_message="no capacity"))
        again = Outbox(tmp_path)
        assert [e.contract_id for e in again.entries()] == ["c/1", "c2"]
        assert again.get("c/1").instance_details == {"externalId": "vm-1"}
        assert again.has("c2") and len(again) == 2
        again.done("c/1")
        again.done("c/1")  # twice is fine
        assert [e.contract_id for e in Outbox(tmp_path).entries()] == ["c2"]

    def test_files_are_private_and_no_temp_files_remain(self, tmp_path):
        box = Outbox(tmp_path)
        box.put(Entry(contract_id="c1", kind="provisioned", instance_details={"rootPassword": "x"}))
        files = list((tmp_path / "outbox").iterdir())
        assert len(files) == 1 and stat.S_IMODE(files[0].stat().st_mode) == 0o600

    def test_an_unreadable_entry_is_set_aside(self, tmp_path):
        box = Outbox(tmp_path)
        (tmp_path / "outbox" / "junk.json").write_text("{not json")
        assert box.entries() == []
        assert (tmp_path / "outbox" / "junk.corrupt").exists()

    def test_entries_of_the_wrong_shape_are_set_aside_and_the_rest_still_sent(self, tmp_path):
        """Valid JSON that is not an entry (a stray or damaged file) never stops the others from going out."""
        box = Outbox(tmp_path)
        box.put(Entry(contract_id="good", kind="provisioned", instance_details={"externalId": "vm-1"}))
        for name, text in (("a.json", '{"contract_id": "zzz"}'), ("b.json", "[]"), ("c.json", '"x"'),
                           ("d.json", '{"contract_id": 5, "kind": "provisioned"}'),
                           ("e.json", '{"contract_id": "y", "kind": "exploded"}')):
            (tmp_path / "outbox" / name).write_text(text)
        assert [e.contract_id for e in box.entries()] == ["good"]
        assert sorted(p.name for p in (tmp_path / "outbox").glob("*.corrupt")) == [
            "a.corrupt", "b.corrupt", "c.corrupt", "d.corrupt", "e.corrupt"]
