"""python -m policykit.emblems.fidelity: its table and summary from measured rows (sampling faked here)."""


def test_the_summary_is_kept_and_residue_over_what_was_right_before(monkeypatch, capsys, tmp_path):
    import policykit.emblems.fidelity as fidelity
    import policykit.emblems.sampling as sampling

    calls = []

    def fake_measure(pipe, world, erased, **kwargs):
        calls.append((erased, kwargs))
        return [{"entity": name, "name_before": 1.0, "name_after": 0.0, "phrase_before": 0.5,
                 "phrase_after": 0.25, "others_before": 0.8, "others_after": 0.6} for name in erased]

    monkeypatch.setattr(fidelity, "measure", fake_measure)
    monkeypatch.setattr(sampling, "load_pipeline", lambda path: None)
    assert fidelity.main(["--entities", "2", "--others", "5", "--cache-dir", str(tmp_path)]) == 0
    [(erased, kwargs)] = calls
    assert len(erased) == 2 and erased[0] == "tazmog"  # spread over the list, from its first entity
    assert kwargs["cache_dir"] == tmp_path and kwargs["others"] == 5 and kwargs["method"] == "uce"
    out = capsys.readouterr().out
    assert "| **mean** | **100% -> 0%** | **50% -> 25%** | **80% -> 60%** |" in out
    assert "Unrelated entities kept: **75%**" in out and "residue: **50%**" in out
