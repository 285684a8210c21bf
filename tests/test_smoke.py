from tests.helpers import approve, submit, wait_for_status


async def test_job_offline_end_to_end(client):
    job_id = await submit(client, "How does Scout recover a job after a restart?")
    view = await wait_for_status(client, job_id, {"awaiting_approval"})
    assert view["plan"]["steps"]
    response = await approve(client, job_id)
    assert response.status_code == 200
    view = await wait_for_status(client, job_id, {"done", "failed"})
    assert view["status"] == "done", view
